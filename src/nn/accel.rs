//! Fused CPU kernels for a folded convolution (fp32), on top of [`crate::ffi`]: oneDNN's
//! `_convolution_pointwise` with the activation (or the residual add) fused into the convolution
//! and the weight reordered once into oneDNN's blocked layout for each input size it meets,
//! instead of `conv2d` + `clamp_` (+ `add_`) with a weight reorder inside every call.
//!
//! It computes the same convolution as `conv2d` (within float rounding: about 3e-7 of the
//! largest logit on MobileNetV2); `tests/it/optimizations.rs` holds it to the plain model.

use super::activation::Activation;
use crate::ffi::{self, ConvGeometry};
use crate::{Error, Result};
use std::ffi::CStr;
use std::sync::Mutex;
use tch::Tensor;

/// Input sizes whose reordered weights are kept; a new size beyond this drops the others.
const PACKED_SIZES: usize = 4;

/// Fused kernel state for one folded convolution.
#[derive(Debug)]
pub struct Accel {
    geometry: ConvGeometry,
    activation: Activation,
    /// The activation as oneDNN's post-op (`attr`, scalars).
    post_op: (&'static CStr, &'static [f64]),
    /// Folded weight `[O, I/groups, k, k]` (contiguous) and bias `[O]`.
    weight: Tensor,
    bias: Tensor,
    /// The weight in oneDNN's blocked layout, per input size `[N, C, H, W]` (oneDNN picks the
    /// layout for the shape).
    packed: Mutex<Vec<([i64; 4], Tensor)>>,
}

impl Accel {
    /// Prepares the fused kernel for `weight`/`bias` (fp32, CPU); an error for an activation
    /// oneDNN cannot fuse ([`Activation::onednn_post_op`]).
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        geometry: ConvGeometry,
        activation: Activation,
    ) -> Result<Accel> {
        let post_op = activation.onednn_post_op().ok_or_else(|| {
            Error::config(
                "fused convolution",
                format!("oneDNN has no {} post-op", activation.name()),
            )
        })?;
        Ok(Accel {
            geometry,
            activation,
            post_op,
            weight: weight.f_contiguous()?.f_detach()?,
            bias: bias.f_contiguous()?.f_detach()?,
            packed: Mutex::new(Vec::new()),
        })
    }

    /// The oneDNN weight for inputs shaped like `xs`, reordered on first use of that shape.
    fn packed_weight(&self, xs: &Tensor) -> Result<Tensor> {
        let size = xs.size();
        let key: [i64; 4] = size
            .as_slice()
            .try_into()
            .map_err(|_| Error::bad_input("fused convolution", "expected [N, C, H, W]"))?;
        let mut cache = self
            .packed
            .lock()
            .map_err(|_| Error::config("fused convolution", "weight cache poisoned"))?;
        if let Some((_, w)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(w.shallow_clone());
        }
        let w = ffi::pack_weight(&self.weight, self.geometry, key)?;
        if cache.len() >= PACKED_SIZES {
            cache.clear();
        }
        cache.push((key, w.shallow_clone()));
        Ok(w)
    }

    /// `activation(conv2d(xs))`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let w = self.packed_weight(xs)?;
        ffi::conv_pointwise(xs, &w, Some(&self.bias), self.geometry, self.post_op)
    }

    /// `conv2d(xs) + shortcut`, the add fused (the convolution has no activation).
    pub fn forward_add(&self, xs: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
        if self.activation != Activation::Identity {
            return Err(Error::config(
                "fused convolution",
                "a residual add follows only a convolution without activation",
            ));
        }
        let w = self.packed_weight(xs)?;
        ffi::conv_pointwise_add(xs, shortcut, &w, Some(&self.bias), self.geometry)
    }
}
