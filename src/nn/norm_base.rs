//! The one base of batch norm and instance norm, torch's `_NormBase`
//! (`torch/nn/modules/batchnorm.py`): `num_features`, the options (`eps`, `momentum`, `affine`,
//! `track_running_stats`), their validation, the parameters and buffers with PyTorch's names and
//! initial values, `reset_running_stats`, and the running-statistics update rule.
//!
//! [`BatchNorm`](super::BatchNorm) is `NormBase<BatchNormConfig>` and
//! [`InstanceNorm`](super::InstanceNorm) is `NormBase<InstanceNormConfig>`: the config type picks
//! the layer (its name, its defaults) as the subclass does in PyTorch, and each layer's file adds
//! its input checks and forward passes.
//!
//! ```
//! use mobilenet::nn::{InstanceNorm, InstanceNormConfig};
//! use tch::{nn::VarStore, Device};
//!
//! let vs = VarStore::new(Device::Cpu);
//! let cfg = InstanceNormConfig { track_running_stats: true, ..Default::default() };
//! let inorm = InstanceNorm::new1d(&vs.root().sub("in"), 4, cfg)?;
//! assert_eq!(inorm.name(), "InstanceNorm1d(4) at in");
//! assert!(inorm.weight().is_none() && inorm.running_var().is_some());
//! inorm.reset_running_stats()?;
//! # Ok::<(), mobilenet::Error>(())
//! ```

use std::fmt;
use std::sync::{Arc, OnceLock};

use tch::{nn, Kind, Tensor};

use super::norm::{check_count, check_eps, path_name, Affine};
use crate::ffi::ProcessGroup;
use crate::Result;

/// The options of a [`NormBase`] layer: [`BatchNormConfig`](super::BatchNormConfig) or
/// [`InstanceNormConfig`](super::InstanceNormConfig) (sealed).
/// Both hold `_NormBase.__init__`'s `eps`, `momentum`, `affine` and `track_running_stats`, each
/// with its layer's defaults.
pub trait NormBaseConfig: sealed::Sealed + Copy + fmt::Debug {
    /// The layer's name before its `1d` / `2d`: `BatchNorm` or `InstanceNorm`.
    const LAYER: &'static str;
}

pub(crate) mod sealed {
    /// What [`NormBase::new1d`](super::NormBase::new1d) reads of a config.
    pub trait Sealed {
        fn eps(&self) -> f64;
        fn affine(&self) -> bool;
        fn track_running_stats(&self) -> bool;
    }
}

/// Defines the options struct of a [`NormBase`] layer (`$config`, named `$layer` in messages):
/// `_NormBase.__init__`'s four options with its defaults (`eps` 1e-5, `momentum` 0.1) and the
/// layer's own `affine` and `track_running_stats` defaults, and its [`NormBaseConfig`] impl.
macro_rules! norm_base_config {
    (
        $(#[$doc:meta])*
        $config:ident for $layer:literal {
            affine: $affine:literal, track_running_stats: $track:literal $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $config {
            /// Added to the variance before the square root. Must be positive. Default `1e-5`.
            pub eps: f64,
            /// Running-stat update factor. Default `Some(0.1)`. `None` is a cumulative moving
            /// average in batch norm, a factor of 0 (no update) in instance norm, as in PyTorch.
            pub momentum: Option<f64>,
            #[doc = concat!(
                "Learnable per-channel `weight` (init 1) and `bias` (init 0). Default `",
                stringify!($affine),
                "`."
            )]
            pub affine: bool,
            #[doc = concat!(
                "Keep `running_mean`, `running_var` and `num_batches_tracked` and use them in ",
                "eval mode; without them eval mode normalizes with the input's statistics too. ",
                "Default `",
                stringify!($track),
                "`."
            )]
            pub track_running_stats: bool,
        }

        impl Default for $config {
            fn default() -> Self {
                $config {
                    eps: 1e-5,
                    momentum: Some(0.1),
                    affine: $affine,
                    track_running_stats: $track,
                }
            }
        }

        impl $crate::nn::NormBaseConfig for $config {
            const LAYER: &'static str = $layer;
        }

        impl $crate::nn::norm_base::sealed::Sealed for $config {
            fn eps(&self) -> f64 {
                self.eps
            }
            fn affine(&self) -> bool {
                self.affine
            }
            fn track_running_stats(&self) -> bool {
                self.track_running_stats
            }
        }
    };
}

pub(crate) use norm_base_config;

/// The buffers kept with `track_running_stats`: all three or none.
#[derive(Debug)]
struct RunningStats {
    /// `running_mean` `[C]`, init zeros.
    mean: Tensor,
    /// `running_var` `[C]`, init ones.
    var: Tensor,
    /// `num_batches_tracked`: int64 scalar (shape `[]`), init 0.
    num_batches_tracked: Tensor,
}

/// torch's `_NormBase`: a batch norm or instance norm layer over `num_features` channels, with
/// its options (the config type `C`) and its state. The tensors are the var-store variables: `weight` `[C]` (trainable, init
/// ones) and `bias` `[C]` (trainable, init zeros) when `affine`; the buffers `running_mean` `[C]`
/// (zeros), `running_var` `[C]` (ones) and `num_batches_tracked` (int64 `[]`, 0) when
/// `track_running_stats`.
#[derive(Debug)]
pub struct NormBase<C> {
    cfg: C,
    num_features: i64,
    /// 1 for `*Norm1d`, 2 for `*Norm2d`.
    spatial_dims: usize,
    /// The var-store path (`features.0.1`), for messages.
    path: String,
    affine: Affine,
    running: Option<RunningStats>,
    /// The process group a synchronized batch norm normalizes over in training
    /// (`nn.SyncBatchNorm`'s `process_group`; set once by `BatchNorm::synchronize`).
    sync: OnceLock<Arc<ProcessGroup>>,
}

impl<C: NormBaseConfig> NormBase<C> {
    /// `torch.nn.BatchNorm1d(num_features, ...)` (input `[N, C]` or `[N, C, L]`) or
    /// `torch.nn.InstanceNorm1d(num_features, ...)` (input `[N, C, L]` or unbatched `[C, L]`),
    /// as `cfg` is a [`BatchNormConfig`](super::BatchNormConfig) or an
    /// [`InstanceNormConfig`](super::InstanceNormConfig).
    pub fn new1d(p: &nn::Path, num_features: i64, cfg: C) -> Result<Self> {
        Self::new(p, 1, num_features, cfg)
    }

    /// `torch.nn.BatchNorm2d(num_features, ...)` (input `[N, C, H, W]`) or
    /// `torch.nn.InstanceNorm2d(num_features, ...)` (input `[N, C, H, W]` or unbatched
    /// `[C, H, W]`), as `cfg` is a [`BatchNormConfig`](super::BatchNormConfig) or an
    /// [`InstanceNormConfig`](super::InstanceNormConfig).
    pub fn new2d(p: &nn::Path, num_features: i64, cfg: C) -> Result<Self> {
        Self::new(p, 2, num_features, cfg)
    }

    /// `_NormBase.__init__`: validates `num_features` and `eps`, then registers the parameters
    /// and buffers on `p` with PyTorch's names and initial values.
    fn new(p: &nn::Path, spatial_dims: usize, num_features: i64, cfg: C) -> Result<Self> {
        let path = path_name(p);
        let name = Self::layer_name(spatial_dims, num_features, &path);
        check_count(&name, "num_features", num_features)?;
        check_eps(&name, cfg.eps())?;
        let shape = [num_features];
        let affine = Affine::new(p, &shape, cfg.affine(), cfg.affine())?;
        let running = if cfg.track_running_stats() {
            let opts = (p.kind(), p.device());
            let count = Tensor::f_zeros([0i64; 0], (Kind::Int64, p.device()))?;
            Some(RunningStats {
                mean: p.add("running_mean", Tensor::f_zeros(shape, opts)?, false),
                var: p.add("running_var", Tensor::f_ones(shape, opts)?, false),
                num_batches_tracked: p.add("num_batches_tracked", count, false),
            })
        } else {
            None
        };
        Ok(NormBase {
            cfg,
            num_features,
            spatial_dims,
            path,
            affine,
            running,
            sync: OnceLock::new(),
        })
    }

    /// `BatchNorm2d(32) at features.0.1`.
    fn layer_name(spatial_dims: usize, num_features: i64, path: &str) -> String {
        format!("{}{spatial_dims}d({num_features}) at {path}", C::LAYER)
    }

    /// The layer's name for messages: `BatchNorm2d(32) at features.0.1`.
    pub fn name(&self) -> String {
        Self::layer_name(self.spatial_dims, self.num_features, &self.path)
    }

    /// The options this layer was built with.
    pub fn config(&self) -> C {
        self.cfg
    }

    /// The channel count `C`.
    pub fn num_features(&self) -> i64 {
        self.num_features
    }

    /// 1 for `BatchNorm1d` / `InstanceNorm1d`, 2 for `BatchNorm2d` / `InstanceNorm2d`.
    pub fn spatial_dims(&self) -> usize {
        self.spatial_dims
    }

    /// `weight` `[C]` when affine.
    pub fn weight(&self) -> Option<&Tensor> {
        self.affine.weight()
    }

    /// `bias` `[C]` when affine.
    pub fn bias(&self) -> Option<&Tensor> {
        self.affine.bias()
    }

    /// `running_mean` `[C]` when tracking running stats.
    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| &r.mean)
    }

    /// `running_var` `[C]` when tracking running stats.
    pub fn running_var(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| &r.var)
    }

    /// `num_batches_tracked` (int64, shape `[]`) when tracking running stats; batch norm counts
    /// its training batches there, instance norm (as in PyTorch) never does.
    pub fn num_batches_tracked(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|r| &r.num_batches_tracked)
    }

    /// `_NormBase.reset_running_stats`: `running_mean` to zeros, `running_var` to ones,
    /// `num_batches_tracked` to 0, in place; nothing without running stats.
    pub fn reset_running_stats(&self) -> Result<()> {
        if let Some(r) = &self.running {
            tch::no_grad(|| -> Result<()> {
                let _ = r.mean.shallow_clone().f_zero_()?;
                let _ = r.var.shallow_clone().f_fill_(1)?;
                let _ = r.num_batches_tracked.shallow_clone().f_zero_()?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Whether a forward normalizes with the input's own statistics (PyTorch's `bn_training` in
    /// `_BatchNorm.forward`, `use_input_stats` in `_InstanceNorm`): in training, and in eval mode
    /// without running stats.
    pub(crate) fn uses_input_stats(&self, train: bool) -> bool {
        train || self.running.is_none()
    }

    /// The process group of a synchronized batch norm (see `BatchNorm::synchronize`).
    pub(crate) fn sync_slot(&self) -> &OnceLock<Arc<ProcessGroup>> {
        &self.sync
    }

    /// The affine parameters, for the explicit forward passes.
    pub(crate) fn affine(&self) -> &Affine {
        &self.affine
    }

    /// The running-statistics update of a training step, in place and without grad:
    /// `running = (1 - factor) * running + factor * batch`, where the batch statistics are
    /// `per_channel(mean)` and `per_channel(var * n / (n - 1))` (the unbiased variance of `n`
    /// values). `mean` and `var` are the biased statistics the forward normalized with;
    /// `per_channel` reduces them to `[C]`. Nothing without running stats.
    pub(crate) fn update_running_stats(
        &self,
        factor: f64,
        mean: &Tensor,
        var: &Tensor,
        n: f64,
        per_channel: impl Fn(Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let Some(r) = &self.running else {
            return Ok(());
        };
        tch::no_grad(|| -> Result<()> {
            let batch_mean = per_channel(mean.shallow_clone())?;
            let batch_var = per_channel(var.f_mul_scalar(n / (n - 1.0))?)?;
            for (running, batch) in [(&r.mean, batch_mean), (&r.var, batch_var)] {
                let new = running
                    .f_mul_scalar(1.0 - factor)?
                    .f_add(&batch.f_mul_scalar(factor)?)?;
                running.shallow_clone().f_copy_(&new)?;
            }
            Ok(())
        })
    }
}
