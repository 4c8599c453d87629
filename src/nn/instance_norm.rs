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

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::norm::{
    channel_view, check_count, check_eps, check_float, fmt_shape, mean_biased_var, path_name,
    register_state,
};
use crate::{Error, Result};

/// Options of [`InstanceNorm`], with `torch.nn.InstanceNorm*d`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceNormConfig {
    /// Added to the variance before the square root. Must be positive. Default `1e-5`.
    pub eps: f64,
    /// Running-stat update factor (`None` counts as 0, as in PyTorch). Default `Some(0.1)`.
    pub momentum: Option<f64>,
    /// Learnable per-channel `weight` (init 1) and `bias` (init 0). Default `false`.
    pub affine: bool,
    /// Keep running stats and use them in eval mode. Default `false`.
    pub track_running_stats: bool,
}

impl Default for InstanceNormConfig {
    fn default() -> Self {
        InstanceNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: false,
            track_running_stats: false,
        }
    }
}

/// `torch.nn.InstanceNorm1d` / `InstanceNorm2d`; the tensors are the var-store variables.
#[derive(Debug)]
pub struct InstanceNorm {
    /// `weight` `[C]` (trainable, init ones) when affine.
    pub weight: Option<Tensor>,
    /// `bias` `[C]` (trainable, init zeros) when affine.
    pub bias: Option<Tensor>,
    /// `running_mean` `[C]` (buffer, init zeros) when tracking running stats.
    pub running_mean: Option<Tensor>,
    /// `running_var` `[C]` (buffer, init ones) when tracking running stats.
    pub running_var: Option<Tensor>,
    /// `num_batches_tracked` (int64, shape `[]`) when tracking; PyTorch never updates it here.
    pub num_batches_tracked: Option<Tensor>,
    pub num_features: i64,
    pub eps: f64,
    pub momentum: Option<f64>,
    pub affine: bool,
    pub track_running_stats: bool,
    /// 1 for `InstanceNorm1d`, 2 for `InstanceNorm2d`.
    pub spatial_dims: usize,
    /// The var-store path, for messages.
    pub path: String,
}

impl InstanceNorm {
    /// `torch.nn.InstanceNorm1d(num_features, ...)`: input `[N, C, L]` or `[C, L]`.
    pub fn new1d(p: &nn::Path, num_features: i64, cfg: InstanceNormConfig) -> Result<Self> {
        Self::new(p, 1, num_features, cfg)
    }

    /// `torch.nn.InstanceNorm2d(num_features, ...)`: input `[N, C, H, W]` or `[C, H, W]`.
    pub fn new2d(p: &nn::Path, num_features: i64, cfg: InstanceNormConfig) -> Result<Self> {
        Self::new(p, 2, num_features, cfg)
    }

    fn new(p: &nn::Path, spatial_dims: usize, c: i64, cfg: InstanceNormConfig) -> Result<Self> {
        let path = path_name(p);
        let name = format!("InstanceNorm{spatial_dims}d({c}) at {path}");
        check_count(&name, "num_features", c)?;
        check_eps(&name, cfg.eps)?;
        let (weight, bias, running_mean, running_var, num_batches_tracked) =
            register_state(p, c, cfg.affine, cfg.track_running_stats)?;
        Ok(InstanceNorm {
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

    /// `InstanceNorm2d(32) at features.0.1`.
    pub fn name(&self) -> String {
        format!(
            "InstanceNorm{}d({}) at {}",
            self.spatial_dims, self.num_features, self.path
        )
    }

    /// The options this layer was built with.
    pub fn config(&self) -> InstanceNormConfig {
        InstanceNormConfig {
            eps: self.eps,
            momentum: self.momentum,
            affine: self.affine,
            track_running_stats: self.track_running_stats,
        }
    }

    /// PyTorch's `use_input_stats`: in training, or without running stats.
    fn uses_input_stats(&self, train: bool) -> bool {
        train || !self.track_running_stats
    }

    /// Checks the input and returns whether it is unbatched.
    fn check_input(&self, xs: &Tensor, train: bool) -> Result<bool> {
        let size = xs.size();
        let nd = self.spatial_dims;
        if size.len() != nd + 1 && size.len() != nd + 2 {
            let want = match nd {
                1 => "a 3-D [N, C, L] or 2-D [C, L] input",
                _ => "a 4-D [N, C, H, W] or 3-D [C, H, W] input",
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
        let unbatched = size.len() == nd + 1;
        let cdim = size.len() - nd - 1;
        if size[cdim] != self.num_features {
            return Err(Error::bad_input(
                self.name(),
                format!(
                    "expected {} channels (dim {cdim}), got {} in input of shape {}",
                    self.num_features,
                    size[cdim],
                    fmt_shape(&size)
                ),
            ));
        }
        check_float(&self.name(), xs)?;
        if self.uses_input_stats(train) && size[cdim + 1..].iter().product::<i64>() == 1 {
            return Err(Error::bad_input(
                self.name(),
                format!(
                    "Expected more than 1 spatial element when training, got input size {}",
                    fmt_shape(&size)
                ),
            ));
        }
        Ok(unbatched)
    }

    /// Forward with libtorch's fused `instance_norm` (what `torch.nn.InstanceNorm*d` runs). An
    /// `Err` naming the layer and shapes for bad input.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let unbatched = self.check_input(xs, train)?;
        let x = if unbatched {
            xs.f_unsqueeze(0)?
        } else {
            xs.shallow_clone()
        };
        let y = x.f_instance_norm(
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.running_mean.as_ref(),
            self.running_var.as_ref(),
            self.uses_input_stats(train),
            self.momentum.unwrap_or(0.0),
            self.eps,
            true,
        )?;
        Ok(if unbatched { y.f_squeeze_dim(0)? } else { y })
    }

    /// The same computation as [`InstanceNorm::f_forward_t`], written out: mean and biased
    /// variance over the spatial dims of each (sample, channel), normalize, scale and shift, and
    /// in training with running stats their update from the batch-averaged instance statistics.
    pub fn forward_explicit(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let unbatched = self.check_input(xs, train)?;
        let x = if unbatched {
            xs.f_unsqueeze(0)?
        } else {
            xs.shallow_clone()
        };
        let rank = x.dim();
        let view = channel_view(self.num_features, rank);
        let (mean, var) = match (&self.running_mean, &self.running_var) {
            (Some(rm), Some(rv)) if !self.uses_input_stats(train) => {
                (rm.f_view(view.as_slice())?, rv.f_view(view.as_slice())?)
            }
            _ => {
                let dims: Vec<i64> = (2..rank as i64).collect();
                let (mean, var) = mean_biased_var(&x, &dims, true)?;
                if let (Some(rm), Some(rv)) = (&self.running_mean, &self.running_var) {
                    let m = self.momentum.unwrap_or(0.0);
                    let n = (x.numel() as i64 / (x.size()[0] * self.num_features)) as f64;
                    tch::no_grad(|| -> Result<()> {
                        let c = [self.num_features];
                        let bmean = mean.f_mean_dim(0, false, mean.kind())?.f_view(c)?;
                        let bvar = var.f_mul_scalar(n / (n - 1.0))?;
                        let bvar = bvar.f_mean_dim(0, false, var.kind())?.f_view(c)?;
                        let new_mean = rm.f_mul_scalar(1.0 - m)?.f_add(&bmean.f_mul_scalar(m)?)?;
                        let new_var = rv.f_mul_scalar(1.0 - m)?.f_add(&bvar.f_mul_scalar(m)?)?;
                        rm.shallow_clone().f_copy_(&new_mean)?;
                        rv.shallow_clone().f_copy_(&new_var)?;
                        Ok(())
                    })?;
                }
                (mean, var)
            }
        };
        let std = var.f_add_scalar(self.eps)?.f_sqrt()?;
        let mut y = x.f_sub(&mean)?.f_div(&std)?;
        if let Some(w) = &self.weight {
            y = y.f_mul(&w.f_view(view.as_slice())?)?;
        }
        if let Some(b) = &self.bias {
            y = y.f_add(&b.f_view(view.as_slice())?)?;
        }
        Ok(if unbatched { y.f_squeeze_dim(0)? } else { y })
    }
}

/// `forward_t` panics with the error's message on bad input; library and CLI code calls
/// [`InstanceNorm::f_forward_t`].
impl ModuleT for InstanceNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.f_forward_t(xs, train)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
