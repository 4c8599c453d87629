//! Group normalization: `torch.nn.GroupNorm(num_groups, num_channels, eps, affine)`.
//!
//! On `[N, C, H, W]` (or any `[N, C, *]`) the C channels are split into `num_groups` groups of
//! `C / G` consecutive channels; group norm reduces over each group's channels and H, W: one mean
//! and (biased) variance per sample and group, then a per-channel affine:
//! `y = (x - mean[n, g]) / sqrt(var[n, g] + eps) * weight[c] + bias[c]`.
//! `GroupNorm(1, C)` is layer norm over (C, H, W) with a per-channel affine; `GroupNorm(C, C)` is
//! instance norm with an affine.
//!
//! It has no running statistics and does not depend on the batch: train and eval mode compute
//! the same thing, and it works the same for batch size 1, where batch norm degrades.
//!
//! ```
//! use mobilenet::nn::{GroupNorm, GroupNormConfig};
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//!
//! let vs = VarStore::new(Device::Cpu);
//! let gn = GroupNorm::new(&vs.root().sub("gn"), 4, 32, GroupNormConfig::default())?;
//! let x = Tensor::randn([1, 32, 7, 7], (Kind::Float, Device::Cpu));
//! assert_eq!(gn.f_forward_t(&x, true)?.size(), [1, 32, 7, 7]);
//! assert!(GroupNorm::new(&vs.root().sub("bad"), 5, 32, GroupNormConfig::default()).is_err());
//! # Ok::<(), mobilenet::Error>(())
//! ```

use tch::nn;
use tch::Tensor;

use super::norm::{
    channel_view, check_channels, check_count, check_eps, check_float, check_stat_size,
    mean_biased_var, path_name, rank_error, Affine,
};
use crate::{Error, Result};

/// Options of [`GroupNorm`], with `torch.nn.GroupNorm`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormConfig {
    /// Added to the variance before the square root. Must be positive. Default `1e-5`.
    pub eps: f64,
    /// Learnable per-channel `weight` (init 1) and `bias` (init 0). Default `true`.
    pub affine: bool,
}

impl Default for GroupNormConfig {
    fn default() -> Self {
        GroupNormConfig {
            eps: 1e-5,
            affine: true,
        }
    }
}

/// `torch.nn.GroupNorm`: `num_channels` channels in `num_groups` groups. The tensors are the
/// var-store variables: `weight` `[C]` (trainable, init ones) and `bias` `[C]` (trainable, init
/// zeros) when affine.
#[derive(Debug)]
pub struct GroupNorm {
    cfg: GroupNormConfig,
    num_groups: i64,
    num_channels: i64,
    affine: Affine,
    /// The var-store path, for messages.
    path: String,
}

impl GroupNorm {
    /// `torch.nn.GroupNorm(num_groups, num_channels, eps, affine)`; `num_channels` must be a
    /// multiple of `num_groups`.
    pub fn new(
        p: &nn::Path,
        num_groups: i64,
        num_channels: i64,
        cfg: GroupNormConfig,
    ) -> Result<Self> {
        let path = path_name(p);
        let name = format!("GroupNorm({num_groups}, {num_channels}) at {path}");
        check_count(&name, "num_groups", num_groups)?;
        check_count(&name, "num_channels", num_channels)?;
        if num_channels % num_groups != 0 {
            return Err(Error::config(
                format!("num_groups of {name}"),
                format!(
                    "num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
                ),
            ));
        }
        check_eps(&name, cfg.eps)?;
        Ok(GroupNorm {
            cfg,
            num_groups,
            num_channels,
            affine: Affine::new(p, &[num_channels], cfg.affine, cfg.affine)?,
            path,
        })
    }

    /// `GroupNorm(8, 32) at features.0.1`.
    pub fn name(&self) -> String {
        format!(
            "GroupNorm({}, {}) at {}",
            self.num_groups, self.num_channels, self.path
        )
    }

    /// The options this layer was built with.
    pub fn config(&self) -> GroupNormConfig {
        self.cfg
    }

    /// `weight` `[C]` when affine.
    pub fn weight(&self) -> Option<&Tensor> {
        self.affine.weight()
    }

    /// `bias` `[C]` when affine.
    pub fn bias(&self) -> Option<&Tensor> {
        self.affine.bias()
    }

    /// The group count `G`.
    pub fn num_groups(&self) -> i64 {
        self.num_groups
    }

    /// The channel count `C`.
    pub fn num_channels(&self) -> i64 {
        self.num_channels
    }

    /// Rank (at least 2), channel count, dtype, and more than one value per group.
    fn check_input(&self, xs: &Tensor) -> Result<()> {
        let size = xs.size();
        if size.len() < 2 {
            let want = "an input [N, C, *] of at least 2 dims";
            return Err(rank_error(&self.name(), want, &size));
        }
        check_channels(&self.name(), &size, 1, self.num_channels)?;
        check_float(&self.name(), xs)?;
        // torch.nn.functional.group_norm's `_verify_batch_size` on [N * C / G, G, *].
        let per_group = size[0] * (size[1] / self.num_groups) * size[2..].iter().product::<i64>();
        let note = " (one value per group)";
        check_stat_size(&self.name(), per_group, "value per channel", &size, note)
    }

    /// Forward with libtorch's fused `group_norm`. `train` is accepted for the
    /// [`ModuleT`](tch::nn::ModuleT) interface and has no effect. An `Err` naming the layer and
    /// shapes for bad input.
    pub fn f_forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        let (weight, bias) = (self.weight(), self.bias());
        Ok(xs.f_group_norm(self.num_groups, weight, bias, self.cfg.eps, true)?)
    }

    /// The same computation as [`GroupNorm::f_forward_t`], written out: view as
    /// `[N, G, C/G * H * W]`, mean and biased variance over the last dim, normalize, view back,
    /// per-channel scale and shift.
    pub fn forward_explicit(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        let size = xs.size();
        let g = xs.f_reshape([size[0], self.num_groups, -1])?;
        let (mean, var) = mean_biased_var(&g, &[2], true)?;
        let g = g
            .f_sub(&mean)?
            .f_div(&var.f_add_scalar(self.cfg.eps)?.f_sqrt()?)?;
        let view = channel_view(self.num_channels, size.len());
        self.affine.apply(g.f_reshape(size.as_slice())?, &view)
    }
}
