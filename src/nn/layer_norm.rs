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

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::norm::{check_eps, check_float, fmt_shape, mean_biased_var, path_name};
use crate::{Error, Result};

/// Options of [`LayerNorm`], with `torch.nn.LayerNorm`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormConfig {
    /// Added to the variance before the square root. Must be positive. Default `1e-5`.
    pub eps: f64,
    /// Learnable `weight` (init 1) of shape `normalized_shape`, and `bias` if `bias`. Default `true`.
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

/// `torch.nn.LayerNorm`; the tensors are the var-store variables.
#[derive(Debug)]
pub struct LayerNorm {
    /// `weight` of shape `normalized_shape` (trainable, init ones) when elementwise_affine.
    pub weight: Option<Tensor>,
    /// `bias` of shape `normalized_shape` (trainable, init zeros) when elementwise_affine and bias.
    pub bias: Option<Tensor>,
    /// The trailing dims normalized over.
    pub normalized_shape: Vec<i64>,
    pub eps: f64,
    pub elementwise_affine: bool,
    /// The var-store path, for messages.
    pub path: String,
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
        let (weight, bias) = if cfg.elementwise_affine {
            let w = p.f_ones("weight", normalized_shape)?;
            let b = if cfg.bias {
                Some(p.f_zeros("bias", normalized_shape)?)
            } else {
                None
            };
            (Some(w), b)
        } else {
            (None, None)
        };
        Ok(LayerNorm {
            weight,
            bias,
            normalized_shape: normalized_shape.to_vec(),
            eps: cfg.eps,
            elementwise_affine: cfg.elementwise_affine,
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

    fn check_input(&self, xs: &Tensor) -> Result<()> {
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
        check_float(&self.name(), xs)
    }

    /// Forward with libtorch's fused `layer_norm`. `train` is accepted for the [`ModuleT`]
    /// interface and has no effect. An `Err` naming the layer and shapes for bad input.
    pub fn f_forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        Ok(xs.f_layer_norm(
            self.normalized_shape.as_slice(),
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
            true,
        )?)
    }

    /// The same computation as [`LayerNorm::f_forward_t`], written out: mean and biased variance
    /// over the trailing `normalized_shape` dims, normalize, scale and shift.
    pub fn forward_explicit(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.check_input(xs)?;
        let rank = xs.dim() as i64;
        let dims: Vec<i64> = (rank - self.normalized_shape.len() as i64..rank).collect();
        let (mean, var) = mean_biased_var(xs, &dims, true)?;
        let mut y = xs
            .f_sub(&mean)?
            .f_div(&var.f_add_scalar(self.eps)?.f_sqrt()?)?;
        if let Some(w) = &self.weight {
            y = y.f_mul(w)?;
        }
        if let Some(b) = &self.bias {
            y = y.f_add(b)?;
        }
        Ok(y)
    }
}

/// `forward_t` panics with the error's message on bad input; library and CLI code calls
/// [`LayerNorm::f_forward_t`].
impl ModuleT for LayerNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.f_forward_t(xs, train)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
