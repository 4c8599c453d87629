//! Squeeze-and-excitation (Hu et al., "Squeeze-and-Excitation Networks", 2018), as torchvision's
//! `ops.misc.SqueezeExcitation` with MobileNet V3's arguments: global average pool, 1x1 conv
//! `fc1` + ReLU, 1x1 conv `fc2` + hardsigmoid (the gate), then the input scaled channel-wise.

use super::activation::Activation;
use super::conv::dotted;
use crate::Result;
use tch::{nn, Tensor};

/// `x * gate(x)` with `gate = scale_activation(fc2(activation(fc1(avgpool(x)))))`.
///
/// Input and output `[N, channels, H, W]`; variables `{p}.fc1.weight`
/// `[squeeze_channels, channels, 1, 1]`, `{p}.fc1.bias`, `{p}.fc2.weight`
/// `[channels, squeeze_channels, 1, 1]`, `{p}.fc2.bias`.
#[derive(Debug)]
pub struct SqueezeExcitation {
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    channels: i64,
    squeeze_channels: i64,
    name: String,
}

impl SqueezeExcitation {
    /// After `fc1` (torchvision's `activation`).
    pub const ACTIVATION: Activation = Activation::Relu;
    /// The gate after `fc2` (`scale_activation`).
    pub const SCALE_ACTIVATION: Activation = Activation::Hardsigmoid;

    pub fn new(p: nn::Path, channels: i64, squeeze_channels: i64) -> Result<Self> {
        let init = nn::init::DEFAULT_KAIMING_UNIFORM;
        let [(_, w1), (_, b1), (_, w2), (_, b2)] = Self::shapes(channels, squeeze_channels);
        let fc1 = &p / "fc1";
        let fc2 = &p / "fc2";
        Ok(SqueezeExcitation {
            fc1_weight: fc1.f_var("weight", &w1, init)?,
            fc1_bias: fc1.f_zeros("bias", &b1)?,
            fc2_weight: fc2.f_var("weight", &w2, init)?,
            fc2_bias: fc2.f_zeros("bias", &b2)?,
            channels,
            squeeze_channels,
            name: dotted(&p),
        })
    }

    pub fn f_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let s = xs.f_adaptive_avg_pool2d([1, 1])?;
        let s = Self::ACTIVATION.apply_fresh(pointwise(&s, &self.fc1_weight, &self.fc1_bias)?)?;
        let s =
            Self::SCALE_ACTIVATION.apply_fresh(pointwise(&s, &self.fc2_weight, &self.fc2_bias)?)?;
        Ok(s * xs)
    }

    /// `(fc1 weight, fc1 bias, fc2 weight, fc2 bias)`.
    pub fn parameters(&self) -> [&Tensor; 4] {
        [
            &self.fc1_weight,
            &self.fc1_bias,
            &self.fc2_weight,
            &self.fc2_bias,
        ]
    }

    pub fn channels(&self) -> i64 {
        self.channels
    }

    pub fn squeeze_channels(&self) -> i64 {
        self.squeeze_channels
    }

    /// The dotted var-store path, e.g. `features.4.block.2`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The variables under the layer's path and their shapes, in module order.
    pub fn shapes(channels: i64, squeeze_channels: i64) -> [(&'static str, Vec<i64>); 4] {
        let (c, s) = (channels, squeeze_channels);
        [
            ("fc1.weight", vec![s, c, 1, 1]),
            ("fc1.bias", vec![s]),
            ("fc2.weight", vec![c, s, 1, 1]),
            ("fc2.bias", vec![c]),
        ]
    }

    /// Trainable parameters of a layer on `channels` squeezed to `squeeze_channels`.
    pub fn parameter_count(channels: i64, squeeze_channels: i64) -> i64 {
        Self::shapes(channels, squeeze_channels)
            .iter()
            .map(|(_, shape)| shape.iter().product::<i64>())
            .sum()
    }

    /// Multiply-adds for one sample on an `h`x`w` map: the two 1x1 convs on the pooled vector,
    /// then the channel-wise scaling.
    pub fn mult_adds(channels: i64, squeeze_channels: i64, h: i64, w: i64) -> i64 {
        2 * channels * squeeze_channels + channels * h * w
    }
}

/// A 1x1 convolution with bias (`fc1`, `fc2`).
fn pointwise(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(xs.f_conv2d(weight, Some(bias), [1, 1], [0, 0], [1, 1], 1)?)
}
