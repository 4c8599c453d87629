//! Instance normalization: `torch.nn.InstanceNorm1d` (input `[N, C, L]` or unbatched `[C, L]`)
//! and `torch.nn.InstanceNorm2d` (input `[N, C, H, W]` or unbatched `[C, H, W]`), with PyTorch's
//! defaults (no affine, no running stats) and its `instance_norm` semantics.
//!
//! On `[N, C, H, W]` instance norm reduces over H and W: one mean and (biased) variance per
//! sample and channel, `y = (x - mean[n, c]) / sqrt(var[n, c] + eps) * weight[c] + bias[c]`.
//!
//! With `track_running_stats`, training also moves `running_mean`/`running_var` toward the
//! per-instance statistics averaged over the batch (`running = (1 - m) * running + m *
//! mean_n(stat[n])`, unbiased variance), and eval mode normalizes with the running stats. As in
//! PyTorch, momentum `None` means a factor of 0 (the running stats stay put) and
//! `num_batches_tracked` is registered but never counted.
//!
//! Instance norm removes each image's own contrast and brightness per channel: the usual choice
//! for style transfer and image generation, rarely for classification.
//!
//! The parameters, buffers, options and the update rule come from the shared base
//! ([`NormBase`], torch's `_NormBase`); this file holds what `_InstanceNorm` adds: its defaults
//! ([`InstanceNormConfig`]), unbatched input, the input checks, and the forward passes.
//!
//! One difference from PyTorch: a channel count different from `num_features` is an error even
//! without affine (PyTorch only warns then).
//!
//! ```
//! use mobilenet::nn::{InstanceNorm, InstanceNormConfig};
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//!
//! let vs = VarStore::new(Device::Cpu);
//! let cfg = InstanceNormConfig { affine: true, ..Default::default() };
//! let inorm = InstanceNorm::new2d(&vs.root().sub("in"), 3, cfg)?;
//! let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
//! let y = inorm.f_forward_t(&x, false)?;
//! // each (sample, channel) plane has mean 0 (weight 1, bias 0)
//! let m = y.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
//! assert!(m.abs().max().double_value(&[]) < 1e-5);
//! # Ok::<(), mobilenet::Error>(())
//! ```

use tch::Tensor;

use super::norm::{
    channel_view, check_channels, check_float, check_stat_size, mean_biased_var, rank_error,
};
use super::norm_base::{norm_base_config, NormBase};
use crate::Result;

norm_base_config! {
    /// Options of [`InstanceNorm`], with `torch.nn.InstanceNorm*d`'s defaults.
    InstanceNormConfig for "InstanceNorm" { affine: false, track_running_stats: false }
}

/// `torch.nn.InstanceNorm1d` / `InstanceNorm2d`: built with [`NormBase::new1d`] /
/// [`NormBase::new2d`], state read with [`NormBase::weight`], [`NormBase::running_mean`] etc.
/// (the tensors are the var-store variables); the forward passes are below.
pub type InstanceNorm = NormBase<InstanceNormConfig>;

impl InstanceNorm {
    /// Checks the input and returns it batched (`[C, *]` as `[1, C, *]`), with whether it was
    /// unbatched.
    fn batched(&self, xs: &Tensor, train: bool) -> Result<(Tensor, bool)> {
        let size = xs.size();
        let nd = self.spatial_dims();
        if size.len() != nd + 1 && size.len() != nd + 2 {
            let want = match nd {
                1 => "a 3-D [N, C, L] or 2-D [C, L] input",
                _ => "a 4-D [N, C, H, W] or 3-D [C, H, W] input",
            };
            return Err(rank_error(&self.name(), want, &size));
        }
        let unbatched = size.len() == nd + 1;
        let cdim = size.len() - nd - 1;
        check_channels(&self.name(), &size, cdim, self.num_features())?;
        check_float(&self.name(), xs)?;
        if self.uses_input_stats(train) {
            let values = size[cdim + 1..].iter().product::<i64>();
            check_stat_size(&self.name(), values, "spatial element", &size, "")?;
        }
        let x = if unbatched {
            xs.f_unsqueeze(0)?
        } else {
            xs.shallow_clone()
        };
        Ok((x, unbatched))
    }

    /// Forward with libtorch's fused `instance_norm` (what `torch.nn.InstanceNorm*d` runs). An
    /// `Err` naming the layer and shapes for bad input.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (x, unbatched) = self.batched(xs, train)?;
        let cfg = self.config();
        let y = x.f_instance_norm(
            self.weight(),
            self.bias(),
            self.running_mean(),
            self.running_var(),
            self.uses_input_stats(train),
            cfg.momentum.unwrap_or(0.0),
            cfg.eps,
            true,
        )?;
        Ok(if unbatched { y.f_squeeze_dim(0)? } else { y })
    }

    /// The same computation as [`InstanceNorm::f_forward_t`], written out: mean and biased
    /// variance over the spatial dims of each (sample, channel), normalize, scale and shift, and
    /// in training with running stats their update from the batch-averaged instance statistics.
    pub fn forward_explicit(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (x, unbatched) = self.batched(xs, train)?;
        let rank = x.dim();
        let c = self.num_features();
        let view = channel_view(c, rank);
        let (mean, var) = match (self.running_mean(), self.running_var()) {
            (Some(rm), Some(rv)) if !self.uses_input_stats(train) => {
                (rm.f_view(view.as_slice())?, rv.f_view(view.as_slice())?)
            }
            _ => {
                let dims: Vec<i64> = (2..rank as i64).collect();
                let (mean, var) = mean_biased_var(&x, &dims, true)?;
                let m = self.config().momentum.unwrap_or(0.0);
                let n = x.size()[2..].iter().product::<i64>() as f64;
                // [N, C, 1, ...] instance statistics, averaged over the batch.
                let batch_average =
                    |s: Tensor| Ok(s.f_mean_dim(0, false, s.kind())?.f_view([c])?);
                self.update_running_stats(m, &mean, &var, n, batch_average)?;
                (mean, var)
            }
        };
        let std = var.f_add_scalar(self.config().eps)?.f_sqrt()?;
        let y = self.affine().apply(x.f_sub(&mean)?.f_div(&std)?, &view)?;
        Ok(if unbatched { y.f_squeeze_dim(0)? } else { y })
    }
}
