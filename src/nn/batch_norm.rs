//! Batch normalization: `torch.nn.BatchNorm1d` (input `[N, C]` or `[N, C, L]`) and
//! `torch.nn.BatchNorm2d` (input `[N, C, H, W]`), with PyTorch's parameters, buffers, defaults
//! and running-statistics rule.
//!
//! On `[N, C, H, W]` batch norm reduces over N, H and W: one mean and (biased) variance per
//! channel, computed from the batch in training, and from the running statistics in eval mode:
//!
//! `y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]`
//!
//! In training the running statistics move toward the batch's: `running = (1 - m) * running +
//! m * batch`, with the unbiased variance `var * n / (n - 1)` (n values per channel), `m` the
//! momentum, or `1 / num_batches_tracked` when momentum is `None` (a cumulative average).
//!
//! Batch norm degrades with small batches (noisy statistics; one value per channel is an error
//! when training): [`GroupNorm`](super::GroupNorm) does not depend on the batch. In eval mode it
//! is a per-channel affine map that folds into the preceding conv
//! ([`BatchNorm::eval_scale_shift`]).
//!
//! The parameters, buffers, options and the update rule come from the shared base
//! ([`NormBase`], torch's `_NormBase`); this file holds what `_BatchNorm` adds: its defaults
//! ([`BatchNormConfig`]), the input checks, the batch counting, the forward passes and the
//! eval-mode map.
//!
//! ```
//! use mobilenet::nn::{BatchNorm, BatchNormConfig};
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//!
//! let vs = VarStore::new(Device::Cpu);
//! let bn = BatchNorm::new2d(&vs.root().sub("bn"), 3, BatchNormConfig::default())?;
//! let x = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu));
//! let y = bn.f_forward_t(&x, true)?; // batch statistics; updates the running ones
//! assert_eq!(y.size(), [4, 3, 5, 5]);
//! assert_eq!(i64::try_from(bn.num_batches_tracked().unwrap())?, 1);
//! assert!(bn.f_forward_t(&x.view([4, 75]), false).is_err()); // not [N, C, H, W]
//! # Ok::<(), mobilenet::Error>(())
//! ```

use tch::Tensor;

use super::norm::{
    channel_view, check_channels, check_float, check_stat_size, mean_biased_var, rank_error,
};
use super::norm_base::{norm_base_config, NormBase};
use crate::{Error, Result};

norm_base_config! {
    /// Options of [`BatchNorm`], with `torch.nn.BatchNorm*d`'s defaults.
    BatchNormConfig for "BatchNorm" { affine: true, track_running_stats: true }
}

/// `torch.nn.BatchNorm1d` / `BatchNorm2d`: built with [`NormBase::new1d`] / [`NormBase::new2d`],
/// state read with [`NormBase::weight`], [`NormBase::running_mean`] etc. (the tensors are the
/// var-store variables themselves); the forward passes and [`BatchNorm::eval_scale_shift`] (to
/// fold the layer into a conv) are below.
pub type BatchNorm = NormBase<BatchNormConfig>;

impl BatchNorm {
    /// Rank, channel count, dtype and (for batch statistics) more than one value per channel.
    fn check_input(&self, xs: &Tensor, train: bool) -> Result<()> {
        let size = xs.size();
        let (ok_rank, want) = match self.spatial_dims() {
            1 => (
                size.len() == 2 || size.len() == 3,
                "a 2-D [N, C] or 3-D [N, C, L] input",
            ),
            _ => (size.len() == 4, "a 4-D [N, C, H, W] input"),
        };
        if !ok_rank {
            return Err(rank_error(&self.name(), want, &size));
        }
        check_channels(&self.name(), &size, 1, self.num_features())?;
        check_float(&self.name(), xs)?;
        if self.uses_input_stats(train) {
            let values = size[0] * size[2..].iter().product::<i64>();
            check_stat_size(&self.name(), values, "value per channel", &size, "")?;
        }
        Ok(())
    }

    /// PyTorch's `exponential_average_factor`; in training with running stats it first adds one
    /// to `num_batches_tracked`, as `_BatchNorm.forward` does.
    fn average_factor(&self, train: bool) -> Result<f64> {
        let momentum = self.config().momentum;
        match (self.num_batches_tracked(), train) {
            (Some(nbt), true) => {
                let mut nbt = nbt.shallow_clone();
                tch::no_grad(|| nbt.f_add_scalar_(1).map(drop))?; // in place
                Ok(match momentum {
                    Some(m) => m,
                    None => 1.0 / i64::try_from(&nbt)? as f64,
                })
            }
            _ => Ok(momentum.unwrap_or(0.0)),
        }
    }

    /// Forward with libtorch's fused `batch_norm` kernel (what `torch.nn.BatchNorm*d` runs): batch
    /// statistics when `train` (updating the running ones) or when there are no running stats,
    /// else the running statistics. An `Err` naming the layer and shapes for bad input. In
    /// training, a layer given a process group by [`BatchNorm::synchronize`] normalizes over
    /// every rank's batch instead (`nn.SyncBatchNorm`, src/nn/sync_batch_norm.rs).
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(xs, train)?;
        let factor = self.average_factor(train)?;
        if let Some(group) = self.sync_slot().get().filter(|_| train) {
            return super::sync_batch_norm::forward(self, xs, group, factor);
        }
        // The buffers (present only when tracked) are used in eval and updated in training.
        Ok(xs.f_batch_norm(
            self.weight(),
            self.bias(),
            self.running_mean(),
            self.running_var(),
            self.uses_input_stats(train),
            factor,
            self.config().eps,
            true,
        )?)
    }

    /// The same computation as [`BatchNorm::f_forward_t`], written out: mean and biased variance
    /// over (N, L) or (N, H, W), `(x - mean) / sqrt(var + eps) * weight + bias`, and in training
    /// the running-stat update with the unbiased variance. Differentiable like the fused path.
    pub fn forward_explicit(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(xs, train)?;
        let factor = self.average_factor(train)?;
        let rank = xs.dim();
        let view = channel_view(self.num_features(), rank);
        let (mean, var) = match (self.running_mean(), self.running_var()) {
            (Some(rm), Some(rv)) if !self.uses_input_stats(train) => {
                (rm.shallow_clone(), rv.shallow_clone())
            }
            _ => {
                let dims: Vec<i64> = std::iter::once(0).chain(2..rank as i64).collect();
                let (mean, var) = mean_biased_var(xs, &dims, false)?;
                // An empty batch leaves the running stats alone (as libtorch's kernel does).
                if train && xs.numel() > 0 {
                    let n = (xs.numel() as i64 / self.num_features()) as f64;
                    self.update_running_stats(factor, &mean, &var, n, Ok)?;
                }
                (mean, var)
            }
        };
        let std = var.f_add_scalar(self.config().eps)?.f_sqrt()?;
        let y = xs
            .f_sub(&mean.f_view(view.as_slice())?)?
            .f_div(&std.f_view(view.as_slice())?)?;
        self.affine().apply(y, &view)
    }

    /// The eval-mode map as a per-channel `(scale, shift)`, `y = x * scale + shift`, with
    /// `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean * scale`:
    /// what folding into the preceding conv multiplies and adds. An `Err` without running stats.
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let (Some(rm), Some(rv)) = (self.running_mean(), self.running_var()) else {
            return Err(Error::bad_input(
                self.name(),
                "has no running statistics (track_running_stats = false) to fold",
            ));
        };
        let mut scale = rv.f_add_scalar(self.config().eps)?.f_rsqrt()?;
        if let Some(w) = self.weight() {
            scale = scale.f_mul(w)?;
        }
        let mut shift = rm.f_mul(&scale)?.f_neg()?;
        if let Some(b) = self.bias() {
            shift = shift.f_add(b)?;
        }
        Ok((scale, shift))
    }
}
