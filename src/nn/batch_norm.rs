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
//! is a per-channel affine map that folds into the preceding conv ([`BatchNorm::eval_scale_shift`]).
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
//! assert_eq!(i64::try_from(bn.num_batches_tracked.as_ref().unwrap())?, 1);
//! assert!(bn.f_forward_t(&x.view([4, 75]), false).is_err()); // not [N, C, H, W]
//! # Ok::<(), mobilenet::Error>(())
//! ```

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::norm::{
    channel_view, check_count, check_eps, check_float, fmt_shape, mean_biased_var, path_name,
    register_state,
};
use crate::{Error, Result};

/// Options of [`BatchNorm`], with `torch.nn.BatchNorm*d`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root. Must be positive. Default `1e-5`.
    pub eps: f64,
    /// Running-stat update factor; `None` for a cumulative moving average. Default `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` (init 1) and `bias` (init 0). Default `true`.
    pub affine: bool,
    /// Keep `running_mean`, `running_var` and `num_batches_tracked` and use them in eval mode;
    /// without them eval mode uses the batch statistics too. Default `true`.
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// `torch.nn.BatchNorm1d` / `BatchNorm2d`. Fields are public so that model code can fold the
/// layer into a conv; the tensors are the var-store variables themselves.
#[derive(Debug)]
pub struct BatchNorm {
    /// `weight` `[C]` (trainable, init ones) when affine.
    pub weight: Option<Tensor>,
    /// `bias` `[C]` (trainable, init zeros) when affine.
    pub bias: Option<Tensor>,
    /// `running_mean` `[C]` (buffer, init zeros) when tracking running stats.
    pub running_mean: Option<Tensor>,
    /// `running_var` `[C]` (buffer, init ones) when tracking running stats.
    pub running_var: Option<Tensor>,
    /// `num_batches_tracked`: int64 scalar (shape `[]`, init 0) when tracking running stats.
    pub num_batches_tracked: Option<Tensor>,
    pub num_features: i64,
    pub eps: f64,
    pub momentum: Option<f64>,
    pub affine: bool,
    pub track_running_stats: bool,
    /// 1 for `BatchNorm1d`, 2 for `BatchNorm2d`.
    pub spatial_dims: usize,
    /// The var-store path (`features.0.1`), for messages.
    pub path: String,
}

impl BatchNorm {
    /// `torch.nn.BatchNorm1d(num_features, ...)`: input `[N, C]` or `[N, C, L]`.
    pub fn new1d(p: &nn::Path, num_features: i64, cfg: BatchNormConfig) -> Result<Self> {
        Self::new(p, 1, num_features, cfg)
    }

    /// `torch.nn.BatchNorm2d(num_features, ...)`: input `[N, C, H, W]`.
    pub fn new2d(p: &nn::Path, num_features: i64, cfg: BatchNormConfig) -> Result<Self> {
        Self::new(p, 2, num_features, cfg)
    }

    fn new(p: &nn::Path, spatial_dims: usize, c: i64, cfg: BatchNormConfig) -> Result<Self> {
        let path = path_name(p);
        let name = format!("BatchNorm{spatial_dims}d({c}) at {path}");
        check_count(&name, "num_features", c)?;
        check_eps(&name, cfg.eps)?;
        let (weight, bias, running_mean, running_var, num_batches_tracked) =
            register_state(p, c, cfg.affine, cfg.track_running_stats)?;
        Ok(BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            num_features: c,
            eps: cfg.eps,
            momentum: cfg.momentum,
            affine: cfg.affine,
            track_running_stats: cfg.track_running_stats,
            spatial_dims,
            path,
        })
    }

    /// `BatchNorm2d(32) at features.0.1`.
    pub fn name(&self) -> String {
        format!(
            "BatchNorm{}d({}) at {}",
            self.spatial_dims, self.num_features, self.path
        )
    }

    /// The options this layer was built with.
    pub fn config(&self) -> BatchNormConfig {
        BatchNormConfig {
            eps: self.eps,
            momentum: self.momentum,
            affine: self.affine,
            track_running_stats: self.track_running_stats,
        }
    }

    /// Whether a forward in this mode normalizes with the batch's statistics (PyTorch's
    /// `bn_training`): in training, and in eval mode without running stats.
    fn uses_batch_stats(&self, train: bool) -> bool {
        train || self.running_mean.is_none() || self.running_var.is_none()
    }

    /// Rank, channel count, dtype and (for batch statistics) more than one value per channel.
    fn check_input(&self, xs: &Tensor, train: bool) -> Result<()> {
        let size = xs.size();
        let ok_rank = match self.spatial_dims {
            1 => size.len() == 2 || size.len() == 3,
            _ => size.len() == 4,
        };
        if !ok_rank {
            let want = match self.spatial_dims {
                1 => "a 2-D [N, C] or 3-D [N, C, L] input",
                _ => "a 4-D [N, C, H, W] input",
            };
            return Err(Error::bad_input(
                self.name(),
                format!(
                    "expected {want}, got {}-D input of shape {}",
                    size.len(),
                    fmt_shape(&size)
                ),
            ));
        }
        if size[1] != self.num_features {
            return Err(Error::bad_input(
                self.name(),
                format!(
                    "expected {} channels (dim 1), got {} in input of shape {}",
                    self.num_features,
                    size[1],
                    fmt_shape(&size)
                ),
            ));
        }
        check_float(&self.name(), xs)?;
        if self.uses_batch_stats(train) && size[0] * size[2..].iter().product::<i64>() == 1 {
            return Err(Error::bad_input(
                self.name(),
                format!(
                    "Expected more than 1 value per channel when training, got input size {}",
                    fmt_shape(&size)
                ),
            ));
        }
        Ok(())
    }

    /// PyTorch's `exponential_average_factor`; in training with running stats it first adds one
    /// to `num_batches_tracked`, as `_BatchNorm.forward` does.
    fn average_factor(&self, train: bool) -> Result<f64> {
        match (&self.num_batches_tracked, train && self.track_running_stats) {
            (Some(nbt), true) => {
                let mut nbt = nbt.shallow_clone();
                tch::no_grad(|| nbt.f_add_scalar_(1).map(drop))?; // in place
                Ok(match self.momentum {
                    Some(m) => m,
                    None => 1.0 / i64::try_from(&nbt)? as f64,
                })
            }
            _ => Ok(self.momentum.unwrap_or(0.0)),
        }
    }

    /// Forward with libtorch's fused `batch_norm` kernel (what `torch.nn.BatchNorm*d` runs): batch
    /// statistics when `train` (updating the running ones) or when there are no running stats,
    /// else the running statistics. An `Err` naming the layer and shapes for bad input.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(xs, train)?;
        let factor = self.average_factor(train)?;
        let bn_training = self.uses_batch_stats(train);
        // Buffers are passed when they are used (eval) or updated (train with tracking).
        let (rm, rv) = if !train || self.track_running_stats {
            (self.running_mean.as_ref(), self.running_var.as_ref())
        } else {
            (None, None)
        };
        Ok(xs.f_batch_norm(
            self.weight.as_ref(),
            self.bias.as_ref(),
            rm,
            rv,
            bn_training,
            factor,
            self.eps,
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
        let view = channel_view(self.num_features, rank);
        let (mean, var) = match (&self.running_mean, &self.running_var) {
            (Some(rm), Some(rv)) if !self.uses_batch_stats(train) => {
                (rm.shallow_clone(), rv.shallow_clone())
            }
            _ => {
                let dims: Vec<i64> = std::iter::once(0).chain(2..rank as i64).collect();
                let (mean, var) = mean_biased_var(xs, &dims, false)?;
                // An empty batch leaves the running stats alone (as libtorch's kernel does).
                if let (true, Some(rm), Some(rv)) = (
                    train && self.track_running_stats && xs.numel() > 0,
                    &self.running_mean,
                    &self.running_var,
                ) {
                    let n = (xs.numel() as i64 / self.num_features) as f64;
                    tch::no_grad(|| -> Result<()> {
                        let unbiased = var.f_mul_scalar(n / (n - 1.0))?;
                        let new_mean = rm
                            .f_mul_scalar(1.0 - factor)?
                            .f_add(&mean.f_mul_scalar(factor)?)?;
                        let new_var = rv
                            .f_mul_scalar(1.0 - factor)?
                            .f_add(&unbiased.f_mul_scalar(factor)?)?;
                        rm.shallow_clone().f_copy_(&new_mean)?;
                        rv.shallow_clone().f_copy_(&new_var)?;
                        Ok(())
                    })?;
                }
                (mean, var)
            }
        };
        let std = var.f_add_scalar(self.eps)?.f_sqrt()?;
        let mut y = xs
            .f_sub(&mean.f_view(view.as_slice())?)?
            .f_div(&std.f_view(view.as_slice())?)?;
        if let Some(w) = &self.weight {
            y = y.f_mul(&w.f_view(view.as_slice())?)?;
        }
        if let Some(b) = &self.bias {
            y = y.f_add(&b.f_view(view.as_slice())?)?;
        }
        Ok(y)
    }

    /// The eval-mode map as a per-channel `(scale, shift)`, `y = x * scale + shift`, with
    /// `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean * scale`:
    /// what folding into the preceding conv multiplies and adds. An `Err` without running stats.
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let (rm, rv) = match (&self.running_mean, &self.running_var) {
            (Some(rm), Some(rv)) => (rm, rv),
            _ => {
                return Err(Error::bad_input(
                    self.name(),
                    "has no running statistics (track_running_stats = false) to fold",
                ))
            }
        };
        let mut scale = rv.f_add_scalar(self.eps)?.f_rsqrt()?;
        if let Some(w) = &self.weight {
            scale = scale.f_mul(w)?;
        }
        let mut shift = rm.f_mul(&scale)?.f_neg()?;
        if let Some(b) = &self.bias {
            shift = shift.f_add(b)?;
        }
        Ok((scale, shift))
    }
}

/// `forward_t` panics with the error's message on bad input (wrong rank or channel count, one
/// value per channel in training); library and CLI code calls [`BatchNorm::f_forward_t`].
impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.f_forward_t(xs, train)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
