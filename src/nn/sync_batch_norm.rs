//! Synchronized batch normalization, `torch.nn.SyncBatchNorm` (`torch/nn/modules/batchnorm.py`
//! and `torch/nn/modules/_functions.py`): in training, a [`BatchNorm`] normalizes over the batch
//! of every rank of a data-parallel run, not over its own slice.
//!
//! Per channel, over all ranks' N x H x W values (n in all):
//!
//! `mean = all_reduce(sum(x)) / n`, `var = all_reduce(sum((x - mean)^2)) / n` (biased),
//! `y = (x - mean) / sqrt(var + eps) * weight + bias`,
//!
//! and the running statistics move as `BatchNorm2d`'s do, with the unbiased global variance
//! `var * n / (n - 1)`; `num_batches_tracked` counts as `BatchNorm2d`'s. Eval mode is plain
//! batch norm, and the parameters and buffers (their state_dict keys) are `BatchNorm2d`'s.
//!
//! PyTorch's SyncBatchNorm runs CUDA-only kernels (`batch_norm_stats`, `batch_norm_elemt`) and
//! refuses CPU input; here it is built from generic ops and a differentiable all-reduce
//! ([`ProcessGroup::all_reduce_sum_differentiable`]), whose backward all-reduces the gradients of
//! the reduced sums, as SyncBatchNorm's backward all-reduces `sum_dy` and `sum_dy_xmu`. The
//! gradients of `weight` and `bias` stay this rank's own (DDP averages them with the others).
//! The mean is all-reduced before the squared deviations are summed (two all-reduces per layer),
//! which keeps the variance as accurate as a single process's.

use std::sync::Arc;

use tch::{Kind, Tensor};

use super::norm::channel_view;
use super::BatchNorm;
use crate::ffi::ProcessGroup;
use crate::{Error, Result};

impl BatchNorm {
    /// Makes this layer a `SyncBatchNorm` over `group` in training (what
    /// `nn.SyncBatchNorm.convert_sync_batchnorm` does to a `BatchNorm2d`). Every rank must
    /// synchronize the same layers and run the same forwards. Once per layer.
    pub fn synchronize(&self, group: Arc<ProcessGroup>) -> Result<()> {
        self.sync_slot()
            .set(group)
            .map_err(|_| Error::config(self.name(), "is already synchronized over a process group"))
    }

    /// Whether [`BatchNorm::synchronize`] made this layer a `SyncBatchNorm`.
    pub fn is_synchronized(&self) -> bool {
        self.sync_slot().get().is_some()
    }
}

/// The training forward of a synchronized `bn` on `xs` (`[N, C, ...]`, already checked), with
/// the running-stat update factor `factor` (from `BatchNorm::average_factor`).
pub(crate) fn forward(
    bn: &BatchNorm,
    xs: &Tensor,
    group: &ProcessGroup,
    factor: f64,
) -> Result<Tensor> {
    let c = bn.num_features();
    let rank = xs.dim();
    let view = channel_view(c, rank);
    let dims: Vec<i64> = std::iter::once(0).chain(2..rank as i64).collect();
    // Statistics in float32 (as libtorch's batch norm keeps them for reduced-precision input).
    let x = xs.f_to_kind(Kind::Float)?;
    let local = (xs.numel() as i64 / c.max(1)) as f64;
    // One all-reduce for the per-channel sums and the value count: [sum(x) (C), n (1)].
    let count = Tensor::f_full([1], local, (Kind::Float, xs.device()))?;
    let sums = Tensor::f_cat(
        &[
            x.f_sum_dim_intlist(dims.as_slice(), false, Kind::Float)?,
            count,
        ],
        0,
    )?;
    let sums = group.all_reduce_sum_differentiable(&sums)?;
    let n = sums.f_narrow(0, c, 1)?.f_double_value(&[0])?;
    if n <= 1.0 {
        return Err(Error::bad_input(
            bn.name(),
            format!("expected more than 1 value per channel over the ranks when training, got {n}"),
        ));
    }
    let mean = sums.f_narrow(0, 0, c)?.f_div_scalar(n)?;
    let xmu = x.f_sub(&mean.f_view(view.as_slice())?)?;
    let ssd = xmu
        .f_square()?
        .f_sum_dim_intlist(dims.as_slice(), false, Kind::Float)?;
    let var = group.all_reduce_sum_differentiable(&ssd)?.f_div_scalar(n)?;
    bn.update_running_stats(factor, &mean, &var, n, Ok)?;
    let invstd = var.f_add_scalar(bn.config().eps)?.f_rsqrt()?;
    let y = xmu.f_mul(&invstd.f_view(view.as_slice())?)?;
    bn.affine()
        .apply(y, &view)?
        .f_to_kind(xs.kind())
        .map_err(Into::into)
}
