//! The activations MobileNets use, each mapped to its kernels in this one place: libtorch's eager
//! op, oneDNN's fused post-op ([`Activation::onednn_post_op`], for [`crate::nn::accel`]) and the
//! TorchScript statement of the compiled graph ([`Activation::torchscript`]).
//!
//! torchvision: `nn.ReLU`, `nn.ReLU6`, `nn.Hardswish`, `nn.Hardsigmoid` (the squeeze-excitation
//! gate, `ops.misc.SqueezeExcitation`); timm: `nn.ReLU6` in `BatchNormAct2d`.

use crate::Result;
use std::ffi::CStr;
use tch::Tensor;

/// The activation after a normalization (or a squeeze-excitation layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No activation: V2's linear bottleneck projection.
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`: bounded, robust in low precision (MobileNet V1/V2).
    Relu6,
    /// `x * relu6(x + 3) / 6` (MobileNet V3).
    Hardswish,
    /// `relu6(x + 3) / 6`: the squeeze-excitation gate of MobileNet V3.
    Hardsigmoid,
}

impl Activation {
    /// Applies the activation; `inplace` reuses `xs`'s storage (only when nothing else reads it
    /// and autograd does not record the graph).
    pub fn apply(self, mut xs: Tensor, inplace: bool) -> Result<Tensor> {
        Ok(match (self, inplace) {
            (Activation::Identity, _) => xs,
            (Activation::Relu, true) => xs.f_relu_()?,
            (Activation::Relu, false) => xs.f_relu()?,
            // nn.ReLU6: hardtanh, whose gradient at 0 and 6 themselves is zero (clamp's is not).
            (Activation::Relu6, inplace) => crate::ffi::hardtanh(&xs, 0.0, 6.0, inplace)?,
            (Activation::Hardswish, true) => xs.f_hardswish_()?,
            (Activation::Hardswish, false) => xs.f_hardswish()?,
            (Activation::Hardsigmoid, true) => xs.f_hardsigmoid_()?,
            (Activation::Hardsigmoid, false) => xs.f_hardsigmoid()?,
        })
    }

    /// Applies the activation to a fresh tensor that nothing else holds: in place unless
    /// autograd records the graph.
    pub fn apply_fresh(self, xs: Tensor) -> Result<Tensor> {
        let inplace = !xs.requires_grad();
        self.apply(xs, inplace)
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Hardswish => "hardswish",
            Activation::Hardsigmoid => "hardsigmoid",
        }
    }

    /// oneDNN's fused post-op for `mkldnn::_convolution_pointwise`: the `attr` string and its
    /// scalars (ReLU6 is `hardtanh(0, 6)`), or `None` where the op has no such post-op.
    pub fn onednn_post_op(self) -> Option<(&'static CStr, &'static [f64])> {
        match self {
            Activation::Identity => Some((c"none", &[])),
            Activation::Relu => Some((c"relu", &[])),
            Activation::Relu6 => Some((c"hardtanh", &[0.0, 6.0])),
            Activation::Hardswish => Some((c"hardswish", &[])),
            Activation::Hardsigmoid => None,
        }
    }

    /// The number src/ffi/engine.cpp gives this activation.
    pub fn engine_code(self) -> i32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Relu6 => 2,
            Activation::Hardswish => 3,
            Activation::Hardsigmoid => 4,
        }
    }

    /// The TorchScript expression applying the activation to the expression `x`.
    pub fn torchscript(self, x: &str) -> String {
        match self {
            Activation::Identity => x.to_string(),
            Activation::Relu => format!("torch.relu({x})"),
            Activation::Relu6 => format!("torch.clamp({x}, 0.0, 6.0)"),
            Activation::Hardswish => format!("torch.hardswish({x})"),
            Activation::Hardsigmoid => format!("torch.hardsigmoid({x})"),
        }
    }
}
