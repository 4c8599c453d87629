//! A MobileNet block described once, as data: its units in order (conv-norm-activation or
//! squeeze-excitation) and whether a residual shortcut spans them. The plain, folded and fused
//! forwards, the compiled graph's program, the summary rows and the stage maps all walk this one
//! description, as torchvision builds `InvertedResidual` from an `InvertedResidualConfig` and
//! timm keeps every MobileNet block in `_efficientnet_blocks.py`.
//!
//! A [`BlockSpec`] is the description (shapes, activations, var-store paths); [`Block::new`]
//! creates its variables. The architectures write one function per block type that returns a
//! `BlockSpec` (V1's depthwise-separable conv, V2's and V3's inverted residuals).

use super::conv::{dotted, join_dotted, join_path, ConvNormAct, ConvSpec};
use super::squeeze_excitation::SqueezeExcitation;
use super::{Activation, BatchNormConfig, NormKind};
use crate::{Error, Result};
use tch::{nn, Tensor};

/// One unit of a block, as data. Paths are dotted and relative to the block's path.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitSpec {
    /// `Conv2d(bias=False)` at `conv`, the norm at `norm`, then the spec's activation.
    Conv {
        conv: String,
        norm: String,
        spec: ConvSpec,
    },
    /// Squeeze-and-excitation at `path` on `channels` channels.
    SqueezeExcite {
        path: String,
        channels: i64,
        squeeze_channels: i64,
    },
}

impl UnitSpec {
    /// A conv unit: `conv` and `norm` are the dotted paths of the conv and its norm.
    pub fn conv(conv: impl Into<String>, norm: impl Into<String>, spec: ConvSpec) -> UnitSpec {
        UnitSpec::Conv {
            conv: conv.into(),
            norm: norm.into(),
            spec,
        }
    }
}

/// A block as data: its units in order and whether a residual shortcut adds the block's input
/// to the last unit's output (the residual starts before the first unit, ends after the last).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    pub units: Vec<UnitSpec>,
    pub residual: bool,
    /// The BatchNorm settings of the block's norms (used when the norm is `batch`).
    pub bn: BatchNormConfig,
}

impl BlockSpec {
    /// The state_dict keys and shapes of the block at the dotted `path`, in module order, with
    /// `norm` after every convolution.
    pub fn variables(&self, path: &str, norm: &NormKind) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        for unit in &self.units {
            match unit {
                UnitSpec::Conv {
                    conv,
                    norm: at,
                    spec,
                } => {
                    out.push((
                        join_dotted(&join_dotted(path, conv), "weight"),
                        spec.weight_shape().to_vec(),
                    ));
                    let at = join_dotted(path, at);
                    for (name, shape) in norm.state_shapes(spec.out_channels, self.bn) {
                        out.push((join_dotted(&at, name), shape));
                    }
                }
                UnitSpec::SqueezeExcite {
                    path: at,
                    channels: c,
                    squeeze_channels: s,
                } => {
                    let at = join_dotted(path, at);
                    for (name, shape) in SqueezeExcitation::shapes(*c, *s) {
                        out.push((join_dotted(&at, name), shape));
                    }
                }
            }
        }
        out
    }
}

/// One built unit of a [`Block`].
// Built once per model: the variants' sizes don't matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Unit {
    Conv(ConvNormAct),
    SqueezeExcite(SqueezeExcitation),
}

/// A built block: its units in order and its residual shortcut.
///
/// Input `[N, C_in, H, W]`, output `[N, C_out, H', W']`.
#[derive(Debug)]
pub struct Block {
    units: Vec<Unit>,
    residual: bool,
    name: String,
}

impl Block {
    /// Creates the variables of `spec` under `p` (the block's path, e.g. `features.3`), with
    /// `norm` after each convolution.
    pub fn new(p: &nn::Path, block: &BlockSpec, norm: &NormKind) -> Result<Block> {
        let name = dotted(p);
        let units = block
            .units
            .iter()
            .map(|u| {
                Ok(match u {
                    UnitSpec::Conv {
                        conv,
                        norm: at,
                        spec,
                    } => Unit::Conv(ConvNormAct::new(
                        join_path(p, conv),
                        join_path(p, at),
                        *spec,
                        norm,
                        block.bn,
                    )?),
                    UnitSpec::SqueezeExcite {
                        path,
                        channels,
                        squeeze_channels,
                    } => Unit::SqueezeExcite(SqueezeExcitation::new(
                        join_path(p, path),
                        *channels,
                        *squeeze_channels,
                    )?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let block = Block {
            units,
            residual: block.residual,
            name,
        };
        block.check_residual()?;
        Ok(block)
    }

    /// A residual block ends with a conv without activation whose output has the input's
    /// channels (the shortcut is added to it, fused on the fast path).
    fn check_residual(&self) -> Result<()> {
        if !self.residual {
            return Ok(());
        }
        let first_in = self.convs().next().map(|c| c.spec().in_channels);
        match self.units.last() {
            Some(Unit::Conv(last))
                if last.spec().activation == Activation::Identity
                    && Some(last.spec().out_channels) == first_in =>
            {
                Ok(())
            }
            _ => Err(Error::config(
                format!("block {}", self.name),
                "a residual block must end with a conv without activation that keeps the \
                 input's channels",
            )),
        }
    }

    /// Runs the units in order; a residual block adds its input to the last unit's output.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = xs.shallow_clone();
        let last = self.units.len().saturating_sub(1);
        for (i, unit) in self.units.iter().enumerate() {
            y = match unit {
                Unit::Conv(c) if self.residual && i == last => c.f_forward_add(&y, xs, train)?,
                Unit::Conv(c) => c.f_forward_t(&y, train)?,
                Unit::SqueezeExcite(se) => se.f_forward(&y)?,
            };
        }
        Ok(y)
    }

    /// The units in order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// The conv-norm-activation units in order.
    pub fn convs(&self) -> impl Iterator<Item = &ConvNormAct> {
        self.units.iter().filter_map(|u| match u {
            Unit::Conv(c) => Some(c),
            Unit::SqueezeExcite(_) => None,
        })
    }

    pub fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvNormAct> {
        self.units.iter_mut().filter_map(|u| match u {
            Unit::Conv(c) => Some(c),
            Unit::SqueezeExcite(_) => None,
        })
    }

    /// Whether a residual shortcut spans the block (torchvision's `use_res_connect`, timm's
    /// `has_skip`).
    pub fn has_skip(&self) -> bool {
        self.residual
    }

    /// The block's dotted var-store path, e.g. `features.3`.
    pub fn name(&self) -> &str {
        &self.name
    }
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
