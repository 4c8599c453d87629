//! The shape every MobileNet shares: a feature extractor of named stages, each a list of blocks,
//! then global average pooling and a classifier head of linear layers.
//!
//! An architecture only describes itself as data, a [`NetworkSpec`]: its blocks
//! ([`crate::nn::BlockSpec`]) at their var-store paths and its head. Everything else is derived
//! from that one description: the variables ([`NetworkSpec::build`]), the state_dict keys and
//! shapes a checkpoint must have ([`NetworkSpec::variables`], used to recognize a file's
//! architecture), the summary rows ([`NetworkSpec::rows`], without allocating weights), the
//! forward and its stage maps ([`Network`]) and the compiled graph's program
//! ([`Network::program`]).

use super::graph::{Linear as GraphLinear, Program, Step};
use super::summary::{rows_from_units, LayerRow};
use crate::nn::conv::{check_channels, join_path};
use crate::nn::{Activation, Block, BlockSpec, ConvNormAct, NormKind};
use crate::{Error, Result};
use tch::{nn, Tensor};

/// torchvision's initialization of MobileNet V2/V3 linear layers: `normal_(0, 0.01)`.
pub const TORCHVISION_LINEAR_INIT: nn::Init = nn::Init::Randn {
    mean: 0.0,
    stdev: 0.01,
};

/// A named stage: its blocks at their dotted var-store paths; its output is the stage map
/// `name` (`features.3` for torchvision, `blocks.2` or `bn1` for timm).
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub blocks: Vec<(String, BlockSpec)>,
}

impl StageSpec {
    /// torchvision's `features`: one block per stage, at and named `features.{i}`.
    pub fn features(specs: Vec<BlockSpec>) -> Vec<StageSpec> {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| StageSpec {
                name: format!("features.{i}"),
                blocks: vec![(format!("features.{i}"), spec)],
            })
            .collect()
    }
}

/// A linear layer of the head: `nn.Linear(inp, out)` at `path` with `init` weights and a zero
/// bias, then `activation`.
#[derive(Debug, Clone, Copy)]
pub struct LinearSpec {
    pub path: &'static str,
    pub inp: i64,
    pub out: i64,
    pub init: nn::Init,
    pub activation: Activation,
}

/// A whole network as data.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    pub stages: Vec<StageSpec>,
    /// The classifier's linear layers after global average pooling.
    pub head: Vec<LinearSpec>,
    /// Dropout before the last linear layer (torchvision's V2 `classifier = [Dropout,
    /// Linear]`, V3's `[Linear, Hardswish, Dropout, Linear]`; timm's `drop_rate`).
    pub dropout: f64,
}

impl NetworkSpec {
    fn blocks(&self) -> impl Iterator<Item = &(String, BlockSpec)> {
        self.stages.iter().flat_map(|s| &s.blocks)
    }

    /// Creates the variables under `p`, with `norm` after every convolution. Variables are
    /// created in module order, as PyTorch's constructors do.
    pub fn build(&self, p: &nn::Path, norm: &NormKind) -> Result<Network> {
        let stages = self
            .stages
            .iter()
            .map(|s| {
                let blocks = s
                    .blocks
                    .iter()
                    .map(|(path, spec)| Block::new(&join_path(p, path), spec, norm))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Stage {
                    name: s.name.clone(),
                    blocks,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = self
            .head
            .iter()
            .map(|l| Linear::new(&join_path(p, l.path), l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Network {
            stages,
            head,
            dropout: self.dropout,
            spec: self.clone(),
        })
    }

    /// Every state_dict key and its shape, in module order, as `model.state_dict()` lists them
    /// with `norm` after every convolution.
    pub fn variables(&self, norm: &NormKind) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        for (path, block) in self.blocks() {
            out.extend(block.variables(path, norm));
        }
        for l in &self.head {
            out.push((format!("{}.weight", l.path), vec![l.out, l.inp]));
            out.push((format!("{}.bias", l.path), vec![l.out]));
        }
        out
    }

    /// Summary rows of the whole network at `resolution` with `norm` after every convolution
    /// (no weights are allocated).
    pub fn rows(&self, resolution: i64, norm: &NormKind) -> Vec<LayerRow> {
        let units: Vec<_> = self
            .blocks()
            .flat_map(|(path, block)| {
                block
                    .units
                    .iter()
                    .map(move |u| (path.as_str(), u, &block.bn))
            })
            .collect();
        let head = self
            .head
            .iter()
            .map(|l| LayerRow::linear(l.path, l.out, l.inp))
            .collect();
        rows_from_units(&units, norm, resolution, head)
    }
}

/// A built stage.
#[derive(Debug)]
pub struct Stage {
    pub name: String,
    pub blocks: Vec<Block>,
}

/// A built linear layer of the head.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    weight: Tensor,
    bias: Tensor,
    activation: Activation,
}

impl Linear {
    fn new(p: &nn::Path, spec: &LinearSpec) -> Result<Self> {
        Ok(Linear {
            weight: p.f_var("weight", &[spec.out, spec.inp], spec.init)?,
            bias: p.f_zeros("bias", &[spec.out])?,
            activation: spec.activation,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.activation
            .apply_fresh(xs.f_linear(&self.weight, Some(&self.bias))?)
    }
}

/// Which stage maps a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageMaps {
    /// Only the last stage's output (what the head needs).
    Last,
    /// Every stage's output, for parity checks against PyTorch's feature maps.
    All,
}

/// Whether the classifier's dropout is applied: in training, unless a comparison with another
/// implementation needs the same numbers (PyTorch's random stream is not ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropout {
    Off,
    On,
}

/// A named intermediate feature map (after a stage).
#[derive(Debug)]
pub struct StageOutput {
    /// The module path whose output this is, e.g. `features.3` or `blocks.2`.
    pub name: String,
    pub tensor: Tensor,
}

/// A built network: stages, then pooling and the head, and the description it was built from.
///
/// Input `[N, 3, H, W]`, logits `[N, num_classes]`.
#[derive(Debug)]
pub struct Network {
    stages: Vec<Stage>,
    head: Vec<Linear>,
    dropout: f64,
    spec: NetworkSpec,
}

impl Network {
    /// The description the network was built from.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Runs the stages in order; the last stage's map is always returned.
    pub fn forward_stages(
        &self,
        xs: &Tensor,
        train: bool,
        maps: StageMaps,
    ) -> Result<Vec<StageOutput>> {
        check_channels("model input", xs, 3)?;
        let mut out = Vec::new();
        let mut x = xs.shallow_clone();
        for (i, stage) in self.stages.iter().enumerate() {
            for block in &stage.blocks {
                x = block.f_forward_t(&x, train)?;
            }
            if maps == StageMaps::All || i + 1 == self.stages.len() {
                out.push(StageOutput {
                    name: stage.name.clone(),
                    tensor: x.shallow_clone(),
                });
            }
        }
        Ok(out)
    }

    /// Pools and classifies the last stage map of `stages`.
    pub fn forward_head(&self, stages: &[StageOutput], dropout: Dropout) -> Result<Tensor> {
        let features = stages
            .last()
            .ok_or_else(|| Error::bad_input("model", "no feature stage was produced"))?;
        let mut x = features
            .tensor
            .f_adaptive_avg_pool2d([1, 1])?
            .f_flatten(1, -1)?;
        let last = self.head.len().saturating_sub(1);
        for (i, layer) in self.head.iter().enumerate() {
            if i == last && dropout == Dropout::On && self.dropout > 0.0 {
                x = x.f_dropout(self.dropout, true)?;
            }
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.stages.iter().flat_map(|s| &s.blocks)
    }

    /// The affine parameters of every conv unit's norm layer (what torchvision's
    /// `set_weight_decay` counts as norm parameters), by storage address.
    pub fn norm_parameter_ptrs(&self) -> std::collections::HashSet<usize> {
        self.convs()
            .flat_map(|c| [c.norm().weight(), c.norm().bias()])
            .flatten()
            .map(|t| t.data_ptr() as usize)
            .collect()
    }

    /// The conv-norm-activation units along the main path, in order.
    pub fn convs(&self) -> impl Iterator<Item = &ConvNormAct> {
        self.blocks().flat_map(Block::convs)
    }

    pub fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvNormAct> {
        self.stages
            .iter_mut()
            .flat_map(|s| &mut s.blocks)
            .flat_map(Block::convs_mut)
    }

    /// The main path as graph steps: each block's units, bracketed by its residual.
    pub fn program(&self) -> Program<'_> {
        let mut steps = Vec::new();
        for block in self.blocks() {
            if block.has_skip() {
                steps.push(Step::ResidualStart);
            }
            steps.extend(block.units().iter().map(Step::Unit));
            if block.has_skip() {
                steps.push(Step::ResidualEnd);
            }
        }
        let head = self
            .head
            .iter()
            .map(|l| GraphLinear {
                weight: &l.weight,
                bias: &l.bias,
                activation: l.activation,
            })
            .collect();
        Program { steps, head }
    }
}
