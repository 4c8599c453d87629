//! Convolution + normalization + activation, the unit every MobileNet is built from: torchvision's
//! `ops.misc.Conv2dNormActivation` and timm's `conv_dw`/`bn1` pairs (`BatchNormAct2d`).
//!
//! In eval mode a BatchNorm that follows a convolution can be folded into the convolution's
//! weight and bias ([`ConvNormAct::fold_batch_norm`]):
//! `w' = w * gamma / sqrt(var + eps)`, `b' = beta + (b - mean) * gamma / sqrt(var + eps)`.

use crate::ffi::ConvGeometry;
use crate::nn::accel::Accel;
use crate::nn::{BatchNormConfig, Norm2d, NormKind};
use crate::{Error, Result};
use tch::{nn, Tensor};

/// The activation after a normalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No activation: V2's linear bottleneck projection.
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`: bounded, robust in low precision (MobileNet V1/V2).
    Relu6,
    /// `x * relu6(x + 3) / 6` (MobileNet V3).
    Hardswish,
}

impl Activation {
    /// Applies the activation; `inplace` reuses `xs`'s storage (only when nothing else reads it).
    pub fn apply(self, mut xs: Tensor, inplace: bool) -> Result<Tensor> {
        Ok(match (self, inplace) {
            (Activation::Identity, _) => xs,
            (Activation::Relu, true) => xs.f_relu_()?,
            (Activation::Relu, false) => xs.f_relu()?,
            (Activation::Relu6, true) => xs.f_clamp_(0.0, 6.0)?,
            (Activation::Relu6, false) => xs.f_clamp(0.0, 6.0)?,
            (Activation::Hardswish, true) => xs.f_hardswish_()?,
            (Activation::Hardswish, false) => xs.f_hardswish()?,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Hardswish => "hardswish",
        }
    }
}

/// What a convolution is, for summaries: a dense conv, a depthwise one (one filter per channel)
/// or a pointwise (1x1) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    Conv,
    Depthwise,
    Pointwise,
}

impl ConvKind {
    pub fn name(self) -> &'static str {
        match self {
            ConvKind::Conv => "conv",
            ConvKind::Depthwise => "depthwise",
            ConvKind::Pointwise => "pointwise",
        }
    }
}

/// Shape of a [`ConvNormAct`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvSpec {
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub groups: i64,
    pub dilation: i64,
    pub activation: Activation,
}

impl ConvSpec {
    /// A `kernel`x`kernel` conv with torchvision's padding `(kernel - 1) / 2 * dilation`.
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64, stride: i64) -> Self {
        ConvSpec {
            in_channels,
            out_channels,
            kernel,
            stride,
            groups: 1,
            dilation: 1,
            activation: Activation::Relu6,
        }
    }
    /// A depthwise conv: one `kernel`x`kernel` filter per channel (`groups = channels`).
    pub fn depthwise(channels: i64, kernel: i64, stride: i64) -> Self {
        ConvSpec {
            groups: channels,
            ..ConvSpec::new(channels, channels, kernel, stride)
        }
    }
    pub fn act(self, activation: Activation) -> Self {
        ConvSpec { activation, ..self }
    }
    pub fn dilation(self, dilation: i64) -> Self {
        ConvSpec { dilation, ..self }
    }
    pub fn padding(&self) -> i64 {
        (self.kernel - 1) / 2 * self.dilation
    }
    pub fn kind(&self) -> ConvKind {
        if self.groups > 1 && self.groups == self.in_channels {
            ConvKind::Depthwise
        } else if self.kernel == 1 {
            ConvKind::Pointwise
        } else {
            ConvKind::Conv
        }
    }
    /// Output spatial size for an input of `size` pixels.
    pub fn out_size(&self, size: i64) -> i64 {
        (size + 2 * self.padding() - self.dilation * (self.kernel - 1) - 1) / self.stride + 1
    }
    /// Number of convolution weights (no bias: MobileNet convs before a norm have none).
    pub fn weight_count(&self) -> i64 {
        self.out_channels * (self.in_channels / self.groups) * self.kernel * self.kernel
    }
}

/// `Conv2d(bias=False)` → norm → activation, with the weight at `{conv}.weight` and the norm
/// at `{norm}.*` (torchvision: `{p}.0` and `{p}.1`; timm: `conv_dw` and `bn1`).
///
/// Input `[N, in_channels, H, W]`, output `[N, out_channels, H', W']`.
#[derive(Debug)]
pub struct ConvNormAct {
    pub spec: ConvSpec,
    /// `[out_channels, in_channels / groups, k, k]`.
    pub weight: Tensor,
    pub norm: Norm2d,
    /// Weight and bias with the BatchNorm folded in, used in eval mode when present.
    pub folded: Option<(Tensor, Tensor)>,
    /// Fused CPU kernels for the folded weights ([`ConvNormAct::accelerate`]), used in eval mode.
    pub accel: Option<Accel>,
    /// Dotted var-store path of the convolution, for summaries and errors.
    pub name: String,
}

impl ConvNormAct {
    pub fn new(
        conv: nn::Path,
        norm: nn::Path,
        spec: ConvSpec,
        norm_kind: &NormKind,
        bn: BatchNormConfig,
    ) -> Result<Self> {
        if spec.in_channels <= 0 || spec.out_channels <= 0 || spec.in_channels % spec.groups != 0 {
            return Err(Error::config(
                format!("convolution {}", dotted(&conv)),
                format!(
                    "in_channels {} and out_channels {} must be positive and divisible by groups {}",
                    spec.in_channels, spec.out_channels, spec.groups
                ),
            ));
        }
        let dims = [
            spec.out_channels,
            spec.in_channels / spec.groups,
            spec.kernel,
            spec.kernel,
        ];
        let weight = conv.f_var("weight", &dims, nn::init::DEFAULT_KAIMING_UNIFORM)?;
        let name = dotted(&conv);
        let norm = norm_kind.build(&norm, spec.out_channels, bn)?;
        Ok(ConvNormAct {
            spec,
            weight,
            norm,
            folded: None,
            accel: None,
            name,
        })
    }

    /// Runs conv → norm → activation. `train` selects batch statistics in the norm; the folded
    /// weights are used only in eval mode.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let s = &self.spec;
        check_channels(&self.name, xs, s.in_channels)?;
        if let (Some(accel), false) = (&self.accel, train) {
            return accel.forward(xs);
        }
        let ys = match (&self.folded, train) {
            (Some((w, b)), false) => xs.f_conv2d(
                w,
                Some(b),
                [s.stride, s.stride],
                [s.padding(), s.padding()],
                [s.dilation, s.dilation],
                s.groups,
            )?,
            _ => {
                let ys = xs.f_conv2d::<&Tensor>(
                    &self.weight,
                    None,
                    [s.stride, s.stride],
                    [s.padding(), s.padding()],
                    [s.dilation, s.dilation],
                    s.groups,
                )?;
                self.norm.f_forward_t(&ys, train)?
            }
        };
        // The conv (or norm) output is a fresh tensor that nothing else holds: clamp in place,
        // unless autograd records the graph.
        let inplace = !ys.requires_grad();
        s.activation.apply(ys, inplace)
    }

    /// `forward(xs) + shortcut`: a residual block's last unit (no activation). The add is fused
    /// into the convolution on the accelerated path.
    pub fn f_forward_add(&self, xs: &Tensor, shortcut: &Tensor, train: bool) -> Result<Tensor> {
        if let (Some(accel), false) = (&self.accel, train) {
            check_channels(&self.name, xs, self.spec.in_channels)?;
            return accel.forward_add(xs, shortcut);
        }
        let ys = self.f_forward_t(xs, train)?;
        crate::models::add_shortcut(ys, shortcut)
    }

    /// Switches the folded weights to the fused oneDNN kernel ([`crate::nn::accel`]). Only for
    /// folded fp32 weights on the CPU, with a libtorch that has the kernel; returns whether it
    /// did.
    pub fn accelerate(&mut self) -> Result<bool> {
        let Some((w, b)) = &self.folded else {
            return Ok(false);
        };
        if w.device() != tch::Device::Cpu
            || w.kind() != tch::Kind::Float
            || !crate::ffi::conv_pointwise_available()
        {
            return Ok(false);
        }
        let s = &self.spec;
        let geometry = ConvGeometry {
            padding: s.padding(),
            stride: s.stride,
            dilation: s.dilation,
            groups: s.groups,
        };
        self.accel = Some(Accel::new(w, b, geometry, s.activation)?);
        Ok(true)
    }

    /// Drops the fused kernels (back to libtorch's `conv2d`).
    pub fn deaccelerate(&mut self) {
        self.accel = None;
    }

    /// Folds an eval-mode BatchNorm into the convolution (no-op for other norms, or a BatchNorm
    /// without running statistics). Returns whether it folded.
    pub fn fold_batch_norm(&mut self) -> Result<bool> {
        let Some(bn) = self.norm.as_batch_norm() else {
            return Ok(false);
        };
        if bn.running_mean().is_none() {
            return Ok(false);
        }
        let _guard = tch::no_grad_guard();
        self.accel = None;
        let kind = self.weight.kind();
        // The BatchNorm's eval map y = x * scale + shift, applied to the conv's output channels.
        let (scale, bias) = bn.eval_scale_shift()?;
        let scale = scale
            .f_to_kind(tch::Kind::Double)?
            .f_reshape([-1, 1, 1, 1])?;
        let w = self.weight.f_to_kind(tch::Kind::Double)? * scale;
        self.folded = Some((w.f_to_kind(kind)?, bias.f_to_kind(kind)?));
        Ok(true)
    }

    /// Moves and casts the folded weights (when present) to `device` and `kind`.
    pub fn cast_folded(&mut self, device: tch::Device, kind: tch::Kind) -> Result<()> {
        self.accel = None;
        if let Some((w, b)) = &self.folded {
            self.folded = Some((
                w.f_to_device(device)?.f_to_kind(kind)?,
                b.f_to_device(device)?.f_to_kind(kind)?,
            ));
        }
        Ok(())
    }

    /// Drops the folded weights (back to conv → norm).
    pub fn unfold(&mut self) {
        self.folded = None;
        self.accel = None;
    }

    /// Trainable parameters of the conv and its norm.
    pub fn parameter_count(&self) -> i64 {
        self.weight.numel() as i64 + self.norm_parameter_count()
    }

    pub fn norm_parameter_count(&self) -> i64 {
        let count = |t: Option<&Tensor>| t.map_or(0, |t| t.numel() as i64);
        count(self.norm.weight()) + count(self.norm.bias())
    }

    /// Converts the weights (and folded weights) to a memory format: channels-last when
    /// `channels_last`, contiguous NCHW otherwise. libtorch's conv kernels follow the weight's
    /// and input's strides.
    pub fn set_channels_last(&mut self, channels_last: bool) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let convert = |t: &Tensor| -> Result<Tensor> {
            Ok(if channels_last {
                to_channels_last(t)?
            } else {
                t.f_contiguous()?
            })
        };
        if let Some((w, b)) = &self.folded {
            self.folded = Some((convert(w)?, b.shallow_clone()));
        }
        let w = convert(&self.weight)?;
        self.weight.f_set_data(&w)?;
        Ok(())
    }
}

/// An NCHW tensor with NHWC strides (tch 0.24 has no memory-format API).
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// The var-store path as a dotted key, e.g. `features.1.conv.0.0`.
pub fn dotted(p: &nn::Path) -> String {
    p.components().collect::<Vec<_>>().join(".")
}

/// Errors unless `xs` is `[N, channels, H, W]`.
pub fn check_channels(layer: &str, xs: &Tensor, channels: i64) -> Result<()> {
    let size = xs.size();
    if size.len() != 4 || size[1] != channels {
        return Err(Error::bad_input(
            layer,
            format!("expected input [N, {channels}, H, W], got {size:?}"),
        ));
    }
    Ok(())
}
