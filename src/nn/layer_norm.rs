//! Layer normalization: `torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)`.
//!
//! Reduces over the trailing `normalized_shape` dims of each sample: on `[N, C, H, W]` with
//! `normalized_shape = [C, H, W]`, one mean and (biased) variance per sample, `y = (x - mean[n])
//! / sqrt(var[n] + eps) * weight + bias`, where `weight` and `bias` have shape `normalized_shape`
//! (per element, not per channel: for a per-channel affine on a feature map use
//! `GroupNorm(1, C)`, which is [`NormKind::Layer`](super::NormKind::Layer)).
//!
//! It has no running statistics: train and eval mode compute the same thing and do not depend
//! on the batch. Layer norm is the usual choice for sequences, RNNs and transformers (input
//! `[N, L, D]`, `normalized_shape = [D]`).
//!
//! ```
//! use mobilenet::nn::{LayerNorm, LayerNormConfig};
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//!
//! let vs = VarStore::new(Device::Cpu);
//! let ln = LayerNorm::new(&vs.root().sub("ln"), &[16], LayerNormConfig::default())?;
//! let tokens = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu)); // [N, L, D]
//! let y = ln.f_forward_t(&tokens, true)?;
//! assert_eq!(y.size(), [2, 5, 16]);
//! assert!(ln.f_forward_t(&Tensor::zeros([2, 5, 8], (Kind::Float, Device::Cpu)), true).is_err());
//! # Ok::<(), mobilenet::Error>(())
//! ```

use tch::nn;
use tch::Tensor;

use super::norm::{check_eps, check_float, fmt_shape, mean_biased_var, path_name, Affine};
use crate::{Error, Result};

/// Options of [`LayerNorm`], with `torch.nn.LayerNorm`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormConfig {
    /// Added to the variance before the square root. Must be positive. Default `1e-5`.
    pub eps: f64,
    /// Learnable `weight` (init 1) of shape `normalized_shape`, and `bias` if `bias`. Default
    /// `true`.
    pub elementwise_affine: bool,
    /// With `elementwise_affine`, also a learnable `bias` (init 0). Default `true`.
    pub bias: bool,
}

impl Default for LayerNormConfig {
    fn default() -> Self {
        LayerNormConfig {
            eps: 1e-5,
            elementwise_affine: true,
            bias: true,
        }
    }
}

/// `torch.nn.LayerNorm` over the trailing `normalized_shape` dims. The tensors are the var-store
/// variables: `weight` of shape `normalized_shape` (trainable, init ones) when
/// `elementwise_affine`, and `bias` (trainable, init zeros) when also `bias`.
#[derive(Debug)]
pub struct LayerNorm {
    cfg: LayerNormConfig,
    normalized_shape: Vec<i64>,
    affine: Affine,
    /// The var-store path, for messages.
    path: String,
}

impl LayerNorm {
    /// `torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)`.
    pub fn new(p: &nn::Path, normalized_shape: &[i64], cfg: LayerNormConfig) -> Result<Self> {
        let path = path_name(p);
        let name = format!("LayerNorm({}) at {path}", fmt_shape(normalized_shape));
        if normalized_shape.is_empty() || normalized_shape.iter().any(|&d| d <= 0) {
            return Err(Error::config(
                format!("normalized_shape of {name}"),
                "must be a non-empty list of positive sizes",
            ));
        }
        check_eps(&name, cfg.eps)?;
        let affine = cfg.elementwise_affine;
        Ok(LayerNorm {
            cfg,
            normalized_shape: normalized_shape.to_vec(),
            affine: Affine::new(p, normalized_shape, affine, affine && cfg.bias)?,
            path,
        })
    }

    /// `LayerNorm([32, 7, 7]) at features.0.1`.
    pub fn name(&self) -> String {
        format!(
            "LayerNorm({}) at {}",
            fmt_shape(&self.normalized_shape),
            self.path
        )
    }

    /// The options this layer was built with.
    pub fn config(&self) -> LayerNormConfig {
        self.cfg
    }

    /// The trailing dims normalized over.
    pub fn normalized_shape(&self) -> &[i64] {
        &self.normalized_shape
    }

    /// `weight` of shape `normalized_shape` when elementwise_affine.
    pub fn weight(&self) -> Option<&Tensor> {
        self.affine.weight()
    }

    /// `bias` of shape `normalized_shape` when elementwise_affine and bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.affine.bias()
    }

    /// The trailing dims must be `normalized_shape`, the dtype floating-point. Returns those dims'
    /// indices, the ones normalized over.
    fn check_input(&self, xs: &Tensor) -> Result<Vec<i64>> {
        let size = xs.size();
        let k = self.normalized_shape.len();
        if size.len() < k || size[size.len() - k..] != self.normalized_shape[..] {
            return Err(Error::bad_input(
                self.name(),
                format!(
                    "expected an input whose trailing dims are {}, got shape {}",
                    fmt_shape(&self.normalized_shape),
                    fmt_shape(&size)
                ),
            ));
        }
        check_float(&self.name(), xs)?;
        Ok((size.len() - k..size.len()).map(|d| d as i64).collect())
    }

    /// Forward with libtorch's fused `layer_norm`. `train` is accepted for the
    /// [`ModuleT`](tch::nn::ModuleT) interface and has no effect. An `Err` naming the layer and
    /// shapes for bad input.
    pub fn f_forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        let (weight, bias) = (self.weight(), self.bias());
        Ok(xs.f_layer_norm(&self.normalized_shape, weight, bias, self.cfg.eps, true)?)
    }

    /// The same computation as [`LayerNorm::f_forward_t`], written out: mean and biased variance
    /// over the trailing `normalized_shape` dims, normalize, scale and shift.
    pub fn forward_explicit(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        let dims = self.check_input(xs)?;
        let (mean, var) = mean_biased_var(xs, &dims, true)?;
        let y = xs
            .f_sub(&mean)?
            .f_div(&var.f_add_scalar(self.cfg.eps)?.f_sqrt()?)?;
        self.affine.apply(y, &self.normalized_shape)
    }
}
