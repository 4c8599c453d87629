//! The MobileNet architectures, one file each, behind one [`Model`] type built from a
//! [`ModelConfig`]: V1 (timm's naming), V2 (torchvision's).
//!
//! Every architecture is a struct of named blocks made of [`ConvNormAct`] units, so a caller can
//! reach a block, count its parameters, fold its BatchNorm or read its feature map.

pub mod graph;
mod load;
pub mod mobilenet_v1;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod summary;

pub use mobilenet_v1::MobileNetV1;
pub use mobilenet_v2::MobileNetV2;
pub use mobilenet_v3::MobileNetV3;
pub use summary::{LayerRow, Summary, SummaryUnit};

use crate::nn::conv::ConvNormAct;
use crate::nn::NormKind;
use crate::{Error, Result};
use serde::Serialize;
use tch::{nn, Device, Tensor};

/// The architectures, named as torchvision names its builders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Arch {
    /// MobileNet V1, timm's `mobilenetv1_100` (width 1.0) / `mobilenetv1_125` (width 1.25).
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v1"))]
    #[serde(rename = "mobilenet_v1")]
    MobilenetV1,
    /// MobileNet V2, torchvision's `mobilenet_v2`.
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v2"))]
    #[serde(rename = "mobilenet_v2")]
    MobilenetV2,
    /// MobileNet V3 Large, torchvision's `mobilenet_v3_large`.
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v3_large"))]
    #[serde(rename = "mobilenet_v3_large")]
    MobilenetV3Large,
    /// MobileNet V3 Small, torchvision's `mobilenet_v3_small`.
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v3_small"))]
    #[serde(rename = "mobilenet_v3_small")]
    MobilenetV3Small,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::MobilenetV1 => "mobilenet_v1",
            Arch::MobilenetV2 => "mobilenet_v2",
            Arch::MobilenetV3Large => "mobilenet_v3_large",
            Arch::MobilenetV3Small => "mobilenet_v3_small",
        }
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "mobilenet_v1" | "mobilenetv1" => Some(Arch::MobilenetV1),
            "mobilenet_v2" | "mobilenetv2" => Some(Arch::MobilenetV2),
            "mobilenet_v3_large" => Some(Arch::MobilenetV3Large),
            "mobilenet_v3_small" => Some(Arch::MobilenetV3Small),
            _ => None,
        }
    }

    /// The dropout before the classifier in the reference implementation.
    pub fn default_dropout(self) -> f64 {
        match self {
            Arch::MobilenetV1 => 0.0,
            Arch::MobilenetV2 | Arch::MobilenetV3Large | Arch::MobilenetV3Small => 0.2,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to build a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Scales every layer's channels (rounded by [`make_divisible`]).
    pub width_mult: f64,
    pub num_classes: i64,
    /// The normalization after each convolution (default BatchNorm).
    #[serde(serialize_with = "serialize_display")]
    pub norm: NormKind,
    /// Dropout probability before the classifier (applied in training only).
    pub dropout: f64,
    /// Channels are rounded to a multiple of this (torchvision's `round_nearest`; V1, V2).
    pub round_nearest: i64,
    /// V3: halve the channels of the last blocks (torchvision's `reduced_tail`).
    pub reduced_tail: bool,
    /// V3: dilate the last blocks' depthwise convs instead of striding (`dilated`).
    pub dilated: bool,
}

fn serialize_display<S: serde::Serializer>(v: &NormKind, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl ModelConfig {
    /// The reference defaults: width 1.0, 1000 classes, BatchNorm, the arch's dropout.
    pub fn new(arch: Arch) -> Self {
        ModelConfig {
            arch,
            width_mult: 1.0,
            num_classes: 1000,
            norm: NormKind::default(),
            dropout: arch.default_dropout(),
            round_nearest: 8,
            reduced_tail: false,
            dilated: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.width_mult.is_finite() && self.width_mult > 0.0 && self.width_mult <= 10.0) {
            return Err(Error::config(
                "width_mult",
                format!("{} is not in (0, 10]", self.width_mult),
            ));
        }
        if self.num_classes < 1 {
            return Err(Error::config(
                "num_classes",
                format!("{} is not >= 1", self.num_classes),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(
                "dropout",
                format!("{} is not in [0, 1)", self.dropout),
            ));
        }
        if self.round_nearest < 1 {
            return Err(Error::config(
                "round_nearest",
                format!("{} is not >= 1", self.round_nearest),
            ));
        }
        Ok(())
    }
}

/// torchvision's `_make_divisible` (the same rule as timm's `make_divisible` with
/// `round_limit=0.9`): round `v` to the nearest multiple of `divisor`, never below `divisor`
/// and never more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: i64) -> i64 {
    let d = divisor as f64;
    let mut new_v = divisor.max(((v + d / 2.0) as i64) / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// A block of a `features` sequence (V2's and V3's inverted residuals).
pub trait Block: std::fmt::Debug {
    fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor>;
    /// Its conv-norm-activation units, in order.
    fn units(&self) -> Vec<&ConvNormAct>;
    fn units_mut(&mut self) -> Vec<&mut ConvNormAct>;
}

/// One element of torchvision's `features`: a conv-norm-activation (stem, last conv) or a block.
// Built once per model: the variants' sizes don't matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Feature<B> {
    Conv(ConvNormAct),
    Block(B),
}

impl<B: Block> Feature<B> {
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Feature::Conv(c) => c.f_forward_t(xs, train),
            Feature::Block(b) => b.f_forward_t(xs, train),
        }
    }
    pub fn units(&self) -> Vec<&ConvNormAct> {
        match self {
            Feature::Conv(c) => vec![c],
            Feature::Block(b) => b.units(),
        }
    }
    pub fn units_mut(&mut self) -> Vec<&mut ConvNormAct> {
        match self {
            Feature::Conv(c) => vec![c],
            Feature::Block(b) => b.units_mut(),
        }
    }
}

/// Runs `features` in order; stage `i` is named `features.{i}`. The last stage is always
/// returned, every stage with `keep`.
pub fn forward_features<B: Block>(
    features: &[Feature<B>],
    xs: &Tensor,
    train: bool,
    keep: bool,
) -> Result<Vec<Stage>> {
    let mut stages = Vec::new();
    let mut x = xs.shallow_clone();
    for (i, f) in features.iter().enumerate() {
        x = f.f_forward_t(&x, train)?;
        if keep || i + 1 == features.len() {
            stages.push(Stage {
                name: format!("features.{i}"),
                tensor: x.shallow_clone(),
            });
        }
    }
    Ok(stages)
}

/// `ys + xs` for a residual shortcut; in place on the block's fresh output unless autograd
/// records the graph.
pub fn add_shortcut(ys: Tensor, xs: &Tensor) -> Result<Tensor> {
    if ys.requires_grad() || xs.requires_grad() {
        Ok(ys.f_add(xs)?)
    } else {
        let mut ys = ys;
        Ok(ys.f_add_(xs)?)
    }
}

/// Global average pooling of `[N, C, H, W]` to `[N, C]`.
pub fn global_pool(features: &Tensor) -> Result<Tensor> {
    Ok(features.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?)
}

/// Dropout with probability `p` when `on` (training), else `x` unchanged.
pub fn dropout(x: Tensor, p: f64, on: bool) -> Result<Tensor> {
    Ok(if on && p > 0.0 {
        x.f_dropout(p, true)?
    } else {
        x
    })
}

/// A named intermediate feature map (after a stage).
#[derive(Debug)]
pub struct Stage {
    /// The module path whose output this is, e.g. `features.3` or `blocks.2`.
    pub name: String,
    pub tensor: Tensor,
}

/// What every architecture provides.
pub trait Classifier: std::fmt::Debug {
    /// Runs the feature extractor. The last stage is always returned; `keep` returns every
    /// stage's output.
    fn forward_stages(&self, xs: &Tensor, train: bool, keep: bool) -> Result<Vec<Stage>>;
    /// Pools and classifies the last feature map; `dropout` applies the training dropout.
    fn forward_head(&self, features: &Tensor, dropout: bool) -> Result<Tensor>;
    /// The conv-norm-activation units along the main path, in order.
    fn units(&self) -> Vec<&ConvNormAct>;
    fn units_mut(&mut self) -> Vec<&mut ConvNormAct>;
    /// Summary rows of the head (pooling and classifier).
    fn head_rows(&self) -> Vec<LayerRow>;
    /// The main path as graph steps for [`Model::compile_graph`] (`None`: not supported).
    fn graph_program(&self) -> Option<graph::Program<'_>> {
        None
    }
    /// The layers along the main path for the summary (by default the conv units).
    fn summary_units(&self) -> Vec<SummaryUnit<'_>> {
        self.units().into_iter().map(SummaryUnit::Conv).collect()
    }
    /// Summary rows of the whole network at `resolution`.
    fn rows(&self, resolution: i64) -> Vec<LayerRow> {
        summary::rows_from_units(&self.summary_units(), resolution, self.head_rows())
    }
}

/// A built model: its configuration, its variables (named as the checkpoint's keys) and its
/// architecture.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub vs: nn::VarStore,
    pub net: Box<dyn Classifier>,
    /// Whether the convs' BatchNorms are folded (eval mode only).
    pub folded: bool,
    /// Whether weights and inputs use channels-last strides.
    pub channels_last: bool,
    /// Whether the folded convolutions run the fused CPU kernel ([`Model::accelerate`]).
    pub accelerated: bool,
    /// The whole forward compiled with oneDNN Graph, used in eval mode
    /// ([`Model::compile_graph`]).
    pub graph: Option<crate::ffi::Graph>,
}

impl Model {
    /// Builds the architecture on `device` with freshly initialized weights.
    pub fn new(config: ModelConfig, device: Device) -> Result<Model> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let net: Box<dyn Classifier> = match config.arch {
            Arch::MobilenetV1 => Box::new(MobileNetV1::new(&root, &config)?),
            Arch::MobilenetV2 => Box::new(MobileNetV2::new(&root, &config)?),
            Arch::MobilenetV3Large => Box::new(MobileNetV3::new(&root, &config, true)?),
            Arch::MobilenetV3Small => Box::new(MobileNetV3::new(&root, &config, false)?),
        };
        Ok(Model {
            config,
            vs,
            net,
            folded: false,
            channels_last: false,
            accelerated: false,
            graph: None,
        })
    }

    /// Moves the weights to `device` and casts floating-point ones to `precision`.
    pub fn to(&mut self, device: Device, precision: crate::device::Precision) -> Result<()> {
        precision.check(device)?;
        self.vs.set_device(device);
        match precision {
            crate::device::Precision::Fp32 => self.vs.float(),
            crate::device::Precision::Fp16 => self.vs.half(),
            crate::device::Precision::Bf16 => self.vs.bfloat16(),
        }
        // Folded weights were computed from the full-precision parameters: cast them, never
        // refold from rounded ones (that would differ from PyTorch's reduced-precision result).
        let kind = precision.kind();
        for unit in self.net.units_mut() {
            unit.cast_folded(device, kind)?;
        }
        self.accelerated = false;
        self.graph = None;
        Ok(())
    }

    /// Logits `[N, num_classes]` for images `[N, 3, H, W]`; `train` uses batch statistics and
    /// dropout.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_mode(train)?;
        let x = self.prepare_input(xs)?;
        if let (Some(graph), false) = (&self.graph, train) {
            return graph.forward(&x);
        }
        let stages = self.net.forward_stages(&x, train, false)?;
        self.net.forward_head(&last(&stages)?.tensor, train)
    }

    /// Logits and every stage's feature map. `train` selects batch statistics in the norms;
    /// `dropout` whether the classifier's dropout is applied (parity runs keep it off, since
    /// PyTorch's and our random streams differ).
    pub fn forward_with_stages(
        &self,
        xs: &Tensor,
        train: bool,
        dropout: bool,
    ) -> Result<(Tensor, Vec<Stage>)> {
        self.check_mode(train)?;
        let x = self.prepare_input(xs)?;
        let stages = self.net.forward_stages(&x, train, true)?;
        let logits = self.net.forward_head(&last(&stages)?.tensor, dropout)?;
        Ok((logits, stages))
    }

    /// A folded model is for inference: a train-mode forward would update running statistics
    /// that the folded weights no longer follow.
    fn check_mode(&self, train: bool) -> Result<()> {
        if train && self.folded {
            return Err(Error::bad_input(
                self.config.arch.name(),
                "the BatchNorms are folded (inference only): call unfold_batch_norm() before a \
                 train-mode forward",
            ));
        }
        Ok(())
    }

    fn prepare_input(&self, xs: &Tensor) -> Result<Tensor> {
        let size = xs.size();
        if size.len() != 4 || size[1] != 3 {
            return Err(Error::bad_input(
                self.config.arch.name(),
                format!("expected images [N, 3, H, W], got {size:?}"),
            ));
        }
        if size[2] < 32 || size[3] < 32 {
            return Err(Error::bad_input(
                self.config.arch.name(),
                format!("input {}x{} is smaller than 32x32", size[2], size[3]),
            ));
        }
        if xs.device() != self.vs.device() || xs.kind() != self.kind() {
            return Err(Error::bad_input(
                self.config.arch.name(),
                format!(
                    "input is {:?} on {:?}, the model is {:?} on {:?}",
                    xs.kind(),
                    xs.device(),
                    self.kind(),
                    self.vs.device()
                ),
            ));
        }
        if self.channels_last {
            crate::nn::conv::to_channels_last(xs)
        } else {
            Ok(xs.shallow_clone())
        }
    }

    /// The floating-point kind of the weights.
    pub fn kind(&self) -> tch::Kind {
        self.net
            .units()
            .first()
            .map_or(tch::Kind::Float, |u| u.weight.kind())
    }

    /// Folds every BatchNorm into its convolution (used in eval mode only). Returns how many.
    ///
    /// Fold before casting to fp16/bf16 with [`Model::to`] (it casts the folded weights): folding
    /// from already-rounded parameters gives other numbers than PyTorch's reduced-precision
    /// conv + BatchNorm. The folds are a snapshot: fold again after loading new weights.
    pub fn fold_batch_norm(&mut self) -> Result<usize> {
        let mut n = 0;
        for unit in self.net.units_mut() {
            n += unit.fold_batch_norm()? as usize;
        }
        self.folded = n > 0;
        self.accelerated = false;
        self.graph = None;
        Ok(n)
    }

    /// Compiles the folded model's forward with libtorch's oneDNN Graph fuser
    /// ([`crate::ffi::Graph`]) and uses it for eval-mode forwards. CPU fp32, every
    /// architecture; returns whether it compiled (not before folding, nor on CUDA).
    /// The first two forwards of each input shape profile and then compile the graph (about
    /// 0.2 s for V2 on 2 cores); [`Model::forward_with_stages`] keeps the layer-by-layer path.
    /// Like `torch.jit.enable_onednn_fusion(True)`, it turns the fuser on for the whole process
    /// (a registered TorchScript pass), so other TorchScript modules run in it are fused too.
    pub fn compile_graph(&mut self) -> Result<bool> {
        self.graph = None;
        if !self.folded || self.vs.device() != Device::Cpu || self.kind() != tch::Kind::Float {
            return Ok(false);
        }
        let graph = match self.net.graph_program() {
            Some(program) => graph::compile(&program)?,
            None => None,
        };
        self.graph = graph;
        Ok(self.graph.is_some())
    }

    /// Switches the folded convolutions to the fused CPU kernel ([`crate::nn::accel`]): oneDNN
    /// with the activation and the residual add fused into the convolution and the weights
    /// reordered once per input size. Needs folded fp32 weights on the CPU
    /// ([`Model::fold_batch_norm`] first; [`Model::to`] or refolding turns it off). Returns how
    /// many convolutions it switched.
    pub fn accelerate(&mut self) -> Result<usize> {
        let _guard = tch::no_grad_guard();
        let mut n = 0;
        for unit in self.net.units_mut() {
            n += unit.accelerate()? as usize;
        }
        self.accelerated = n > 0;
        Ok(n)
    }

    /// Turns the fused CPU kernels off.
    pub fn deaccelerate(&mut self) {
        for unit in self.net.units_mut() {
            unit.deaccelerate();
        }
        self.accelerated = false;
    }

    /// Removes folded weights.
    pub fn unfold_batch_norm(&mut self) {
        for unit in self.net.units_mut() {
            unit.unfold();
        }
        self.folded = false;
        self.accelerated = false;
        self.graph = None;
    }

    /// Switches weights (and so activations) to channels-last strides, or back.
    pub fn set_channels_last(&mut self, channels_last: bool) -> Result<()> {
        for unit in self.net.units_mut() {
            unit.set_channels_last(channels_last)?;
        }
        self.channels_last = channels_last;
        Ok(())
    }

    /// Layer table and totals at `resolution`.
    pub fn summary(&self, resolution: i64) -> Summary {
        Summary::new(self.config.clone(), resolution, self.net.rows(resolution))
    }

    /// Trainable parameters, as PyTorch's `sum(p.numel() for p in model.parameters())`.
    pub fn parameter_count(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}

fn last(stages: &[Stage]) -> Result<&Stage> {
    stages
        .last()
        .ok_or_else(|| Error::bad_input("model", "no feature stage was produced"))
}
