//! Convolution + normalization + activation, the unit every MobileNet is built from: torchvision's
//! `ops.misc.Conv2dNormActivation` and timm's `conv_dw`/`bn1` pairs (`BatchNormAct2d`).
//!
//! In eval mode a BatchNorm that follows a convolution can be folded into the convolution's
//! weight and bias ([`ConvNormAct::fold_batch_norm`]):
//! `w' = w * gamma / sqrt(var + eps)`, `b' = beta + (b - mean) * gamma / sqrt(var + eps)`.

use super::accel::Accel;
use super::activation::Activation;
use super::block::add_shortcut;
use super::{BatchNormConfig, Norm2d, NormKind};
use crate::ffi::ConvGeometry;
use crate::{Error, Result};
use tch::{nn, Tensor};

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
    /// The weight's shape `[out_channels, in_channels / groups, k, k]` (no bias: MobileNet
    /// convs before a norm have none).
    pub fn weight_shape(&self) -> [i64; 4] {
        let k = self.kernel;
        [self.out_channels, self.in_channels / self.groups, k, k]
    }

    /// Number of convolution weights.
    pub fn weight_count(&self) -> i64 {
        self.weight_shape().iter().product()
    }

    /// The geometry the fused kernel takes.
    pub fn geometry(&self) -> ConvGeometry {
        ConvGeometry {
            padding: self.padding(),
            stride: self.stride,
            dilation: self.dilation,
            groups: self.groups,
        }
    }
}

/// A convolution's weight and bias with an eval-mode BatchNorm folded in.
#[derive(Debug)]
pub struct Folded {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// How a [`ConvNormAct`] runs in eval mode. Training always runs conv → norm → activation.
#[derive(Debug)]
enum ConvState {
    /// conv → norm → activation.
    Plain,
    /// The BatchNorm folded into the conv's weight and bias: conv → activation.
    Folded(Folded),
    /// Folded, and run by oneDNN's fused kernel ([`Accel`]; CPU fp32).
    Fused(Folded, Accel),
}

/// `Conv2d(bias=False)` → norm → activation, with the weight at `{conv}.weight` and the norm
/// at `{norm}.*` (torchvision: `{p}.0` and `{p}.1`; timm: `conv_dw` and `bn1`).
///
/// Input `[N, in_channels, H, W]`, output `[N, out_channels, H', W']`.
#[derive(Debug)]
pub struct ConvNormAct {
    spec: ConvSpec,
    /// `[out_channels, in_channels / groups, k, k]`.
    weight: Tensor,
    norm: Norm2d,
    state: ConvState,
    /// Dotted var-store path of the convolution, for summaries and errors.
    name: String,
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
        let dims = spec.weight_shape();
        let weight = conv.f_var("weight", &dims, nn::init::DEFAULT_KAIMING_UNIFORM)?;
        let name = dotted(&conv);
        let norm = norm_kind.build(&norm, spec.out_channels, bn)?;
        Ok(ConvNormAct {
            spec,
            weight,
            norm,
            state: ConvState::Plain,
            name,
        })
    }

    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The convolution's own weight (before any folding).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn norm(&self) -> &Norm2d {
        &self.norm
    }

    /// The dotted var-store path of the convolution, e.g. `features.1.conv.0.0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folded weight and bias, when the BatchNorm is folded.
    pub fn folded(&self) -> Option<&Folded> {
        match &self.state {
            ConvState::Plain => None,
            ConvState::Folded(f) | ConvState::Fused(f, _) => Some(f),
        }
    }

    /// Whether eval-mode forwards run the fused oneDNN kernel.
    pub fn is_fused(&self) -> bool {
        matches!(self.state, ConvState::Fused(..))
    }

    /// Runs conv → norm → activation. `train` selects batch statistics in the norm; the folded
    /// weights and the fused kernel are used only in eval mode.
    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let s = &self.spec;
        check_channels(&self.name, xs, s.in_channels)?;
        let ys = match (&self.state, train) {
            (ConvState::Fused(_, accel), false) => return accel.forward(xs),
            (ConvState::Folded(f), false) => conv2d(xs, &f.weight, Some(&f.bias), s)?,
            _ => self
                .norm
                .f_forward_t(&conv2d(xs, &self.weight, None, s)?, train)?,
        };
        // The conv (or norm) output is a fresh tensor that nothing else holds and whose backward
        // does not read it: the activation runs in place, in training too, as torchvision's
        // `Conv2dNormActivation(inplace=True)` runs it (the same values and gradients, one
        // tensor less per unit).
        s.activation.apply(ys, true)
    }

    /// `forward(xs) + shortcut`: a residual block's last unit (no activation). The add is fused
    /// into the convolution on the fused path.
    pub fn f_forward_add(&self, xs: &Tensor, shortcut: &Tensor, train: bool) -> Result<Tensor> {
        if let (ConvState::Fused(_, accel), false) = (&self.state, train) {
            check_channels(&self.name, xs, self.spec.in_channels)?;
            return accel.forward_add(xs, shortcut);
        }
        add_shortcut(self.f_forward_t(xs, train)?, shortcut)
    }

    /// Switches the folded weights to the fused oneDNN kernel ([`crate::nn::accel`]). Only for
    /// folded fp32 weights on the CPU, an activation oneDNN fuses, and a libtorch that has the
    /// kernel; returns whether it did.
    pub fn accelerate(&mut self) -> Result<bool> {
        let Some(f) = self.folded() else {
            return Ok(false);
        };
        let activation = self.spec.activation;
        if f.weight.device() != tch::Device::Cpu
            || f.weight.kind() != tch::Kind::Float
            || activation.onednn_post_op().is_none()
            || !crate::ffi::conv_pointwise_available()
        {
            return Ok(false);
        }
        let accel = Accel::new(&f.weight, &f.bias, self.spec.geometry(), activation)?;
        if let Some(f) = self.take_folded() {
            self.state = ConvState::Fused(f, accel);
        }
        Ok(true)
    }

    /// Drops the fused kernel (back to libtorch's `conv2d` with the folded weights).
    pub fn deaccelerate(&mut self) {
        if self.is_fused() {
            if let Some(f) = self.take_folded() {
                self.state = ConvState::Folded(f);
            }
        }
    }

    /// The folded weights, leaving the unit plain.
    fn take_folded(&mut self) -> Option<Folded> {
        match std::mem::replace(&mut self.state, ConvState::Plain) {
            ConvState::Plain => None,
            ConvState::Folded(f) | ConvState::Fused(f, _) => Some(f),
        }
    }

    /// Folds an eval-mode BatchNorm into the convolution (no-op for other norms, or a BatchNorm
    /// without running statistics); drops the fused kernel. Returns whether it folded.
    pub fn fold_batch_norm(&mut self) -> Result<bool> {
        let Some(bn) = self.norm.as_batch_norm() else {
            return Ok(false);
        };
        if bn.running_mean().is_none() {
            return Ok(false);
        }
        let _guard = tch::no_grad_guard();
        let kind = self.weight.kind();
        // The BatchNorm's eval map y = x * scale + shift, applied to the conv's output channels.
        let (scale, bias) = bn.eval_scale_shift()?;
        let scale = scale
            .f_to_kind(tch::Kind::Double)?
            .f_reshape([-1, 1, 1, 1])?;
        let w = self.weight.f_to_kind(tch::Kind::Double)? * scale;
        self.state = ConvState::Folded(Folded {
            weight: w.f_to_kind(kind)?,
            bias: bias.f_to_kind(kind)?,
        });
        Ok(true)
    }

    /// Moves and casts the folded weights (when present) to `device` and `kind`; drops the
    /// fused kernel.
    pub fn cast_folded(&mut self, device: tch::Device, kind: tch::Kind) -> Result<()> {
        self.deaccelerate();
        if let ConvState::Folded(f) = &self.state {
            let cast =
                |t: &Tensor| -> Result<Tensor> { Ok(t.f_to_device(device)?.f_to_kind(kind)?) };
            self.state = ConvState::Folded(Folded {
                weight: cast(&f.weight)?,
                bias: cast(&f.bias)?,
            });
        }
        Ok(())
    }

    /// Drops the folded weights (back to conv → norm).
    pub fn unfold(&mut self) {
        self.state = ConvState::Plain;
    }

    /// Converts the weights (and folded weights) to a memory format: channels-last when
    /// `channels_last`, contiguous NCHW otherwise. libtorch's conv kernels follow the weight's
    /// and input's strides; the fused kernel keeps its own reordered copy.
    pub fn set_channels_last(&mut self, channels_last: bool) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let convert = |t: &Tensor| -> Result<Tensor> {
            Ok(if channels_last {
                to_channels_last(t)?
            } else {
                t.f_contiguous()?
            })
        };
        if let ConvState::Folded(f) | ConvState::Fused(f, _) = &mut self.state {
            f.weight = convert(&f.weight)?;
        }
        let w = convert(&self.weight)?;
        self.weight.f_set_data(&w)?;
        Ok(())
    }
}

/// `conv2d(xs, weight, bias)` with the spec's stride, padding, dilation and groups.
fn conv2d(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, s: &ConvSpec) -> Result<Tensor> {
    Ok(xs.f_conv2d(
        weight,
        bias,
        [s.stride, s.stride],
        [s.padding(), s.padding()],
        [s.dilation, s.dilation],
        s.groups,
    )?)
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

/// `p` followed by the components of the dotted `path` (`""`: `p` itself).
pub fn join_path<'a>(p: &nn::Path<'a>, path: &str) -> nn::Path<'a> {
    path.split('.')
        .filter(|c| !c.is_empty())
        .fold(p.clone(), |p, c| &p / c)
}

/// `{prefix}.{path}`, or either alone when the other is empty.
pub fn join_dotted(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{path}"),
    }
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
