//! The MobileNet architectures behind one [`Model`] type built from a [`ModelConfig`]: V1
//! (timm's naming), V2, V3 Large and V3 Small (torchvision's), one file each, registered in
//! [`arch`].
//!
//! Every architecture is a [`Network`] of named stages of [`crate::nn::Block`]s, each described
//! once as data ([`crate::nn::BlockSpec`]), so a caller can reach a block, count its parameters,
//! fold its BatchNorm or read its feature map.

pub mod arch;
pub mod engine;
pub mod graph;
mod load;
pub mod mobilenet_v1;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod network;
pub mod summary;

pub use arch::{Arch, ArchInfo, Categories, PublishedWeights, REGISTRY};
pub use network::{Dropout, Network, NetworkSpec, StageMaps, StageOutput};
pub use summary::{LayerRow, Summary};

use crate::nn::NormKind;
use crate::{Error, Result};
use serde::Serialize;
use tch::{nn, Device, Tensor};

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
        let check = Error::check;
        let width = self.width_mult;
        check(
            width.is_finite() && width > 0.0 && width <= 10.0,
            "width_mult",
            format!("{width} is not in (0, 10]"),
        )?;
        let classes = self.num_classes;
        check(
            classes >= 1,
            "num_classes",
            format!("{classes} is not >= 1"),
        )?;
        let p = self.dropout;
        check(
            (0.0..1.0).contains(&p),
            "dropout",
            format!("{p} is not in [0, 1)"),
        )?;
        let r = self.round_nearest;
        check(r >= 1, "round_nearest", format!("{r} is not >= 1"))
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

/// A built model: its configuration, its variables (named as the checkpoint's keys) and its
/// network. `Send`: it can move into a worker thread.
///
/// Eval-mode forwards take the fastest path the model was prepared for: each conv unit is plain,
/// folded or fused ([`Model::fold_batch_norm`], [`Model::accelerate`]); the direct oneDNN engine
/// ([`Model::compile_engine`]) or else a compiled graph ([`Model::compile_graph`]) runs the whole
/// forward when present.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    vs: nn::VarStore,
    net: Network,
    /// Whether weights and inputs use channels-last strides.
    channels_last: bool,
    /// The whole eval-mode forward compiled with oneDNN Graph.
    graph: Option<crate::ffi::Graph>,
    /// The whole eval-mode forward as direct oneDNN calls.
    engine: Option<crate::ffi::Engine>,
}

impl Model {
    /// Builds the architecture on `device` with freshly initialized weights.
    pub fn new(config: ModelConfig, device: Device) -> Result<Model> {
        if device.is_cuda() {
            crate::device::load_cuda();
        }
        let spec = config.arch.describe(&config)?;
        let vs = nn::VarStore::new(device);
        let net = spec.build(&vs.root(), &config.norm)?;
        Ok(Model {
            config,
            vs,
            net,
            channels_last: false,
            graph: None,
            engine: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The variables, named as the checkpoint's keys.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The network: its stages, blocks and head.
    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Whether any BatchNorm is folded into its convolution (eval only).
    pub fn is_folded(&self) -> bool {
        self.net.convs().any(|c| c.folded().is_some())
    }

    /// Whether any convolution runs the fused oneDNN kernel.
    pub fn is_accelerated(&self) -> bool {
        self.net.convs().any(|c| c.is_fused())
    }

    /// Whether eval-mode forwards run the compiled graph.
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Whether eval-mode forwards run the direct oneDNN engine.
    pub fn has_engine(&self) -> bool {
        self.engine.is_some()
    }

    /// The direct oneDNN engine that eval-mode forwards run, when there is one.
    pub fn engine(&self) -> Option<&crate::ffi::Engine> {
        self.engine.as_ref()
    }

    pub fn is_channels_last(&self) -> bool {
        self.channels_last
    }

    /// Moves the weights to `device` and casts floating-point ones to `precision`; drops the
    /// fused kernels and the compiled graph.
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
        for unit in self.net.convs_mut() {
            unit.cast_folded(device, kind)?;
        }
        self.graph = None;
        self.engine = None;
        Ok(())
    }

    /// Logits `[N, num_classes]` for images `[N, 3, H, W]`; `train` uses batch statistics and
    /// dropout.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_mode(train)?;
        if let (Some(engine), false) = (&self.engine, train) {
            // The engine takes NCHW and picks its own layouts.
            self.check_input(xs)?;
            return engine.forward(xs);
        }
        let x = self.prepare_input(xs)?;
        if let (Some(graph), false) = (&self.graph, train) {
            return graph.forward(&x);
        }
        let stages = self.net.forward_stages(&x, train, StageMaps::Last)?;
        let dropout = if train { Dropout::On } else { Dropout::Off };
        self.net.forward_head(&stages, dropout)
    }

    /// Logits and every stage's feature map (never through the compiled graph). `train`
    /// selects batch statistics in the norms; `dropout` whether the classifier's dropout is
    /// applied (parity runs keep it off, since PyTorch's and our random streams differ).
    pub fn forward_with_stages(
        &self,
        xs: &Tensor,
        train: bool,
        dropout: Dropout,
    ) -> Result<(Tensor, Vec<StageOutput>)> {
        self.check_mode(train)?;
        let x = self.prepare_input(xs)?;
        let stages = self.net.forward_stages(&x, train, StageMaps::All)?;
        let logits = self.net.forward_head(&stages, dropout)?;
        Ok((logits, stages))
    }

    /// A folded model is for inference: a train-mode forward would update running statistics
    /// that the folded weights no longer follow.
    fn check_mode(&self, train: bool) -> Result<()> {
        if train && self.is_folded() {
            return Err(Error::bad_input(
                self.config.arch.name(),
                "the BatchNorms are folded (inference only): call unfold_batch_norm() before a \
                 train-mode forward",
            ));
        }
        Ok(())
    }

    fn prepare_input(&self, xs: &Tensor) -> Result<Tensor> {
        self.check_input(xs)?;
        if self.channels_last {
            crate::nn::conv::to_channels_last(xs)
        } else {
            Ok(xs.shallow_clone())
        }
    }

    /// Images `[N, 3, H, W]` of at least 32x32, on the model's device and of its kind.
    fn check_input(&self, xs: &Tensor) -> Result<()> {
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
        Ok(())
    }

    /// The floating-point kind of the weights.
    pub fn kind(&self) -> tch::Kind {
        self.net
            .convs()
            .next()
            .map_or(tch::Kind::Float, |u| u.weight().kind())
    }

    /// Folds every BatchNorm into its convolution (used in eval mode only). Returns how many.
    ///
    /// Fold before casting to fp16/bf16 with [`Model::to`] (it casts the folded weights): folding
    /// from already-rounded parameters gives other numbers than PyTorch's reduced-precision
    /// conv + BatchNorm. The folds are a snapshot: fold again after loading new weights.
    /// Drops the fused kernels and the compiled graph.
    pub fn fold_batch_norm(&mut self) -> Result<usize> {
        self.graph = None;
        self.engine = None;
        let mut n = 0;
        for unit in self.net.convs_mut() {
            n += unit.fold_batch_norm()? as usize;
        }
        Ok(n)
    }

    /// Compiles the folded model's forward with libtorch's oneDNN Graph fuser
    /// ([`crate::ffi::Graph`]) and uses it for eval-mode forwards. CPU fp32, every
    /// architecture; returns whether it compiled (not before folding, nor on CUDA).
    /// The first two forwards of each input shape profile and then compile the graph (about
    /// 0.2 s for V2 on 2 cores); [`Model::forward_with_stages`] keeps the layer-by-layer path.
    ///
    /// The graph is fused only once the process-wide fuser is on: call
    /// [`crate::ffi::enable_onednn_fusion`]`(true)` first (like
    /// `torch.jit.enable_onednn_fusion(True)`, it applies to every TorchScript module the
    /// process runs); without it the graph runs unfused TorchScript.
    pub fn compile_graph(&mut self) -> Result<bool> {
        self.graph = None;
        if !self.is_folded() || self.vs.device() != Device::Cpu || self.kind() != tch::Kind::Float {
            return Ok(false);
        }
        self.graph = graph::compile(&self.net.program())?;
        Ok(self.graph.is_some())
    }

    /// Records the folded model's forward as direct oneDNN calls ([`crate::ffi::Engine`],
    /// src/ffi/engine.cpp) and uses them for eval-mode forwards, ahead of a compiled graph. CPU
    /// fp32, and bf16 where the CPU computes in bf16 ([`crate::info::CpuIsa::bf16_native`]:
    /// `avx512_bf16` or AMX), every architecture with BatchNorm; returns whether it was built
    /// (not before folding, nor on CUDA, nor in fp16 or emulated bf16, nor in a build without
    /// oneDNN). The first forward of each input shape builds its primitives (tens of
    /// milliseconds); [`Model::forward_with_stages`] keeps the layer-by-layer path.
    pub fn compile_engine(&mut self) -> Result<bool> {
        self.engine = None;
        if !self.engine_applies() {
            return Ok(false);
        }
        let bf16 = self.kind() == tch::Kind::BFloat16;
        self.engine = engine::build(&self.net.program(), bf16)?;
        Ok(self.engine.is_some())
    }

    /// Whether [`Model::compile_engine`] would build the engine, its library loading: folded
    /// weights on the CPU, in fp32 or in bf16 where the CPU computes in bf16.
    pub fn engine_applies(&self) -> bool {
        let kind_ok = match self.kind() {
            tch::Kind::Float => true,
            tch::Kind::BFloat16 => crate::info::CpuIsa::detect().bf16_native(),
            _ => false,
        };
        kind_ok && self.is_folded() && self.vs.device() == Device::Cpu
    }

    /// Switches the folded convolutions to the fused CPU kernel ([`crate::nn::accel`]): oneDNN
    /// with the activation and the residual add fused into the convolution and the weights
    /// reordered once per input size. Needs folded fp32 weights on the CPU
    /// ([`Model::fold_batch_norm`] first; [`Model::to`] or refolding turns it off). Returns how
    /// many convolutions it switched.
    pub fn accelerate(&mut self) -> Result<usize> {
        let _guard = tch::no_grad_guard();
        let mut n = 0;
        for unit in self.net.convs_mut() {
            n += unit.accelerate()? as usize;
        }
        Ok(n)
    }

    /// Turns the fused CPU kernels off.
    pub fn deaccelerate(&mut self) {
        for unit in self.net.convs_mut() {
            unit.deaccelerate();
        }
    }

    /// Removes folded weights (and with them the fused kernels and the compiled graph).
    pub fn unfold_batch_norm(&mut self) {
        for unit in self.net.convs_mut() {
            unit.unfold();
        }
        self.graph = None;
        self.engine = None;
    }

    /// Switches weights (and so activations) to channels-last strides, or back.
    pub fn set_channels_last(&mut self, channels_last: bool) -> Result<()> {
        for unit in self.net.convs_mut() {
            unit.set_channels_last(channels_last)?;
        }
        self.channels_last = channels_last;
        Ok(())
    }

    /// Layer table and totals at `resolution`.
    pub fn summary(&self, resolution: i64) -> Summary {
        let rows = self.net.spec().rows(resolution, &self.config.norm);
        Summary::new(self.config.clone(), resolution, rows)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The description's keys and shapes are the built variables' (so a file can be matched
    /// against an architecture without building it).
    #[test]
    fn described_variables_are_the_built_ones() {
        let mut failures = Vec::new();
        for arch in Arch::all() {
            for norm in ["batch", "layer", "instance", "group:8"] {
                let mut config = ModelConfig::new(arch);
                config.norm = norm.parse().unwrap();
                let model = Model::new(config.clone(), Device::Cpu).unwrap();
                let mut built: Vec<(String, Vec<i64>)> = model
                    .var_store()
                    .variables()
                    .into_iter()
                    .map(|(k, t)| (k, t.size()))
                    .collect();
                let mut described = model.network().spec().variables(&config.norm);
                built.sort();
                described.sort();
                if built != described {
                    failures.push(format!("{arch} {norm}"));
                }
            }
        }
        assert!(failures.is_empty(), "differ: {failures:?}");
    }

    #[test]
    fn a_model_can_move_into_a_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Model>();
    }
}
