//! The normalization choice for a conv output ([`NormKind`]) and the layer it builds
//! ([`Norm2d`]): one of `torch.nn.BatchNorm2d`, `torch.nn.GroupNorm` or `torch.nn.InstanceNorm2d`.
//!
//! On a feature map `[N, C, H, W]` the four normalizations differ only in the axes they average
//! over:
//!
//! | kind | PyTorch module for C channels | statistics over | one mean/var per |
//! |---|---|---|---|
//! | `batch` | `nn.BatchNorm2d(C, eps, momentum)` | N, H, W | channel |
//! | `group:G` | `nn.GroupNorm(G, C)` | C/G channels, H, W | sample and group |
//! | `layer` | `nn.GroupNorm(1, C)` | C, H, W | sample |
//! | `instance` | `nn.InstanceNorm2d(C, affine=True)` | H, W | sample and channel |
//!
//! All four have a per-channel affine (`weight`, `bias`). `layer` is LayerNorm over `[C, H, W]`
//! with a per-channel (not per-element) affine, which is what `GroupNorm(1, C)` computes.
//!
//! Which to choose: batch norm is the default of every MobileNet and the fastest at inference
//! (it folds into the conv), but it degrades with small batches (its statistics get noisy, and
//! training with one value per channel is an error); group norm does not depend on the batch at
//! all, so it is the choice for small per-device batches; instance norm removes per-image
//! contrast, which is what style transfer wants and classification usually does not; layer norm
//! is the usual choice for sequences and RNNs/transformers (see [`LayerNorm`]).
//!
//! This file also holds what the four layers share: tch's [`ModuleT`] for each of them and
//! [`Norm2d`] (one definition, `forward_t` panicking where `f_forward_t` returns an `Err`), their
//! affine parameters, and their input checks. [`BatchNorm`] and [`InstanceNorm`] also share
//! their state and running-statistics rule ([`NormBase`](super::NormBase), torch's `_NormBase`).
//!
//! ```
//! use mobilenet::nn::{BatchNormConfig, NormKind};
//! use tch::{nn::ModuleT, nn::VarStore, Device, Kind, Tensor};
//!
//! let kind: NormKind = "group:4".parse()?;
//! assert_eq!(kind.to_string(), "group:4");
//! let vs = VarStore::new(Device::Cpu);
//! let norm = kind.build(&vs.root().sub("bn"), 8, BatchNormConfig::default())?;
//! let y = norm.f_forward_t(&Tensor::randn([1, 8, 4, 4], (Kind::Float, Device::Cpu)), true)?;
//! assert_eq!(y.size(), [1, 8, 4, 4]);
//! assert!(norm.as_batch_norm().is_none());
//! # Ok::<(), mobilenet::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
    LayerNorm,
};
use crate::{Error, Result};

/// Which normalization follows a conv. Parses from and displays as `batch`, `group:G`, `layer`,
/// `instance` (so it works as a clap `value_parser` and serializes as that string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NormKind {
    /// `nn.BatchNorm2d(C)`: statistics over (N, H, W) per channel. The default.
    #[default]
    Batch,
    /// `nn.GroupNorm(G, C)`: statistics over groups of C/G channels and (H, W), per sample.
    Group(i64),
    /// `nn.GroupNorm(1, C)`: statistics over (C, H, W) per sample, per-channel affine.
    Layer,
    /// `nn.InstanceNorm2d(C, affine=True)`: statistics over (H, W) per sample and channel.
    Instance,
}

const KINDS: &str = "batch, group:<G> (G > 0), layer, instance";

impl FromStr for NormKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "batch" => return Ok(NormKind::Batch),
            "layer" => return Ok(NormKind::Layer),
            "instance" => return Ok(NormKind::Instance),
            _ => {}
        }
        if let Some(g) = t.strip_prefix("group") {
            let g = g.strip_prefix(':').ok_or_else(|| {
                Error::config(
                    "norm",
                    format!("{s:?}: group norm needs a group count, e.g. \"group:8\""),
                )
            })?;
            return match g.parse::<i64>() {
                Ok(n) if n > 0 => Ok(NormKind::Group(n)),
                _ => Err(Error::config(
                    "norm",
                    format!("{s:?}: the group count must be a positive integer, got {g:?}"),
                )),
            };
        }
        Err(Error::config(
            "norm",
            format!("unknown norm {s:?}; expected one of: {KINDS}"),
        ))
    }
}

impl fmt::Display for NormKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormKind::Batch => f.write_str("batch"),
            NormKind::Group(g) => write!(f, "group:{g}"),
            NormKind::Layer => f.write_str("layer"),
            NormKind::Instance => f.write_str("instance"),
        }
    }
}

impl serde::Serialize for NormKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NormKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl NormKind {
    /// Builds the normalization of a `channels`-channel conv output under `p`, with PyTorch's
    /// state_dict names (`weight`, `bias`, and for batch norm `running_mean`, `running_var`,
    /// `num_batches_tracked`).
    ///
    /// `batch` is `nn.BatchNorm2d(C, eps=bn.eps, momentum=bn.momentum)` (and `bn.affine`,
    /// `bn.track_running_stats`, true by default); `bn` is not used by the other kinds, which take
    /// PyTorch's defaults: `group:G` is `nn.GroupNorm(G, C)`, `layer` is `nn.GroupNorm(1, C)`,
    /// `instance` is `nn.InstanceNorm2d(C, affine=True)`.
    pub fn build(&self, p: &nn::Path, channels: i64, bn: BatchNormConfig) -> Result<Norm2d> {
        Ok(match *self {
            NormKind::Batch => Norm2d::Batch(BatchNorm::new2d(p, channels, bn)?),
            NormKind::Group(g) => {
                Norm2d::Group(GroupNorm::new(p, g, channels, GroupNormConfig::default())?)
            }
            NormKind::Layer => {
                Norm2d::Group(GroupNorm::new(p, 1, channels, GroupNormConfig::default())?)
            }
            NormKind::Instance => {
                Norm2d::Instance(InstanceNorm::new2d(p, channels, instance_config())?)
            }
        })
    }

    /// The state_dict entries (name and shape) of the norm [`NormKind::build`] makes on
    /// `channels` channels, in PyTorch's order: the affine `weight` and `bias`, then a
    /// BatchNorm's running statistics.
    pub fn state_shapes(
        &self,
        channels: i64,
        bn: BatchNormConfig,
    ) -> Vec<(&'static str, Vec<i64>)> {
        let (affine, running_stats) = match *self {
            NormKind::Batch => (bn.affine, bn.track_running_stats),
            NormKind::Group(_) | NormKind::Layer => (GroupNormConfig::default().affine, false),
            NormKind::Instance => {
                let c = instance_config();
                (c.affine, c.track_running_stats)
            }
        };
        let mut out = Vec::new();
        if affine {
            out.extend([("weight", vec![channels]), ("bias", vec![channels])]);
        }
        if running_stats {
            out.extend([
                ("running_mean", vec![channels]),
                ("running_var", vec![channels]),
                ("num_batches_tracked", vec![]),
            ]);
        }
        out
    }
}

/// `instance`: `nn.InstanceNorm2d(C, affine=True)`.
fn instance_config() -> InstanceNormConfig {
    InstanceNormConfig {
        affine: true,
        ..Default::default()
    }
}

/// The normalization layer of a conv unit, as built by [`NormKind::build`].
#[derive(Debug)]
pub enum Norm2d {
    Batch(BatchNorm),
    Group(GroupNorm),
    Instance(InstanceNorm),
}

impl Norm2d {
    /// Forward on `[N, C, H, W]` with the fused libtorch kernel; an `Err` (naming the layer and
    /// the shapes) for input the layer cannot take.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm2d::Batch(m) => m.f_forward_t(xs, train),
            Norm2d::Group(m) => m.f_forward_t(xs, train),
            Norm2d::Instance(m) => m.f_forward_t(xs, train),
        }
    }

    /// The same computation as [`Norm2d::f_forward_t`], written out op by op.
    pub fn forward_explicit(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm2d::Batch(m) => m.forward_explicit(xs, train),
            Norm2d::Group(m) => m.forward_explicit(xs, train),
            Norm2d::Instance(m) => m.forward_explicit(xs, train),
        }
    }

    /// The batch norm, if this is one (to fold it into the preceding conv).
    pub fn as_batch_norm(&self) -> Option<&BatchNorm> {
        match self {
            Norm2d::Batch(m) => Some(m),
            _ => None,
        }
    }

    /// The per-channel affine weight, if any.
    pub fn weight(&self) -> Option<&Tensor> {
        match self {
            Norm2d::Batch(m) => m.weight(),
            Norm2d::Group(m) => m.weight(),
            Norm2d::Instance(m) => m.weight(),
        }
    }

    /// The per-channel affine bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Norm2d::Batch(m) => m.bias(),
            Norm2d::Group(m) => m.bias(),
            Norm2d::Instance(m) => m.bias(),
        }
    }

    /// The layer's name for messages, e.g. `BatchNorm2d(32) at features.0.1`.
    pub fn name(&self) -> String {
        match self {
            Norm2d::Batch(m) => m.name(),
            Norm2d::Group(m) => m.name(),
            Norm2d::Instance(m) => m.name(),
        }
    }
}

/// Implements tch's [`ModuleT`] for layers with an `f_forward_t`: `forward_t` panics with the
/// error's message on bad input (wrong rank or channel count, one value per statistic in
/// training), so library and CLI code calls `f_forward_t`.
macro_rules! module_t_via_f_forward_t {
    ($($layer:ty),+ $(,)?) => {$(
        /// `forward_t` is `f_forward_t` and panics with its error's message on bad input.
        impl ModuleT for $layer {
            fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
                self.f_forward_t(xs, train)
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        }
    )+};
}

module_t_via_f_forward_t!(BatchNorm, InstanceNorm, GroupNorm, LayerNorm, Norm2d);

// Helpers shared by the four layers.

/// A norm layer's learnable affine: `weight` (init ones) and `bias` (init zeros), trainable
/// var-store variables of one shape, each present or not.
#[derive(Debug)]
pub(crate) struct Affine {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}

impl Affine {
    /// Registers `weight` (if `weight`) and then `bias` (if `bias`) of shape `shape` on `p`.
    pub(crate) fn new(p: &nn::Path, shape: &[i64], weight: bool, bias: bool) -> Result<Self> {
        Ok(Affine {
            weight: weight.then(|| p.f_ones("weight", shape)).transpose()?,
            bias: bias.then(|| p.f_zeros("bias", shape)).transpose()?,
        })
    }

    pub(crate) fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `y * weight + bias`, with `weight` and `bias` viewed as `view` (`[1, C, 1, ..., 1]` for a
    /// per-channel affine); a missing one is skipped.
    pub(crate) fn apply(&self, mut y: Tensor, view: &[i64]) -> Result<Tensor> {
        if let Some(w) = &self.weight {
            y = y.f_mul(&w.f_view(view)?)?;
        }
        if let Some(b) = &self.bias {
            y = y.f_add(&b.f_view(view)?)?;
        }
        Ok(y)
    }
}

/// The var-store path of `p` as it appears in a state_dict key prefix (`features.0.1`).
pub(crate) fn path_name(p: &nn::Path) -> String {
    let s = p.components().collect::<Vec<_>>().join(".");
    if s.is_empty() {
        "<root>".to_string()
    } else {
        s
    }
}

/// `[2, 3, 4, 4]`.
pub(crate) fn fmt_shape(shape: &[i64]) -> String {
    format!("{shape:?}")
}

/// `eps` must be a positive number (PyTorch: "batch_norm eps must be positive").
pub(crate) fn check_eps(layer: &str, eps: f64) -> Result<()> {
    if eps > 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(Error::config(
            format!("eps of {layer}"),
            format!("must be positive, got {eps}"),
        ))
    }
}

/// A count (features, channels, groups) must be positive.
pub(crate) fn check_count(layer: &str, what: &str, n: i64) -> Result<()> {
    if n > 0 {
        Ok(())
    } else {
        Err(Error::config(
            format!("{what} of {layer}"),
            format!("must be positive, got {n}"),
        ))
    }
}

/// The input must be a floating-point tensor.
pub(crate) fn check_float(layer: &str, xs: &Tensor) -> Result<()> {
    if xs.is_floating_point() {
        Ok(())
    } else {
        Err(Error::bad_input(
            layer,
            format!(
                "expected a floating-point input, got {:?} of shape {}",
                xs.kind(),
                fmt_shape(&xs.size())
            ),
        ))
    }
}

/// An input of the wrong rank: "expected {want}, got 3-D input of shape [4, 5, 5]".
pub(crate) fn rank_error(layer: &str, want: &str, size: &[i64]) -> Error {
    Error::bad_input(
        layer,
        format!(
            "expected {want}, got {}-D input of shape {}",
            size.len(),
            fmt_shape(size)
        ),
    )
}

/// Dim `cdim` of the input must hold the layer's `channels`.
pub(crate) fn check_channels(layer: &str, size: &[i64], cdim: usize, channels: i64) -> Result<()> {
    if size[cdim] == channels {
        return Ok(());
    }
    Err(Error::bad_input(
        layer,
        format!(
            "expected {channels} channels (dim {cdim}), got {} in input of shape {}",
            size[cdim],
            fmt_shape(size)
        ),
    ))
}

/// Statistics from the input need more than one value each (PyTorch's `_verify_batch_size` and
/// `_verify_spatial_size`): `values` is how many each averages, `what` names them ("value per
/// channel"), `note` ends the message.
pub(crate) fn check_stat_size(
    layer: &str,
    values: i64,
    what: &str,
    size: &[i64],
    note: &str,
) -> Result<()> {
    if values != 1 {
        return Ok(());
    }
    Err(Error::bad_input(
        layer,
        format!(
            "Expected more than 1 {what} when training, got input size {}{note}",
            fmt_shape(size)
        ),
    ))
}

/// `[1, C, 1, ..., 1]` of length `rank`: a per-channel vector broadcast against `[N, C, *]`.
pub(crate) fn channel_view(c: i64, rank: usize) -> Vec<i64> {
    let mut v = vec![1; rank];
    v[1] = c;
    v
}

/// Mean and biased (population) variance of `xs` over `dims`, as `torch.var_mean(x, dims,
/// correction=0)`: `mean = sum(x) / n`, `var = sum((x - mean)^2) / n` (the explicit paths'
/// statistics; one numerically careful reduction rather than two passes).
pub(crate) fn mean_biased_var(
    xs: &Tensor,
    dims: &[i64],
    keepdim: bool,
) -> Result<(Tensor, Tensor)> {
    let (var, mean) = xs.f_var_mean_correction(dims, 0, keepdim)?;
    Ok((mean, var))
}
