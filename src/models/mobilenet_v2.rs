//! MobileNet V2 exactly as torchvision builds it (`torchvision/models/mobilenetv2.py`): Sandler et
//! al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (2018).
//!
//! Var-store paths are torchvision's state_dict keys (`features.0.0.weight`,
//! `features.1.conv.0.0.weight`, ..., `features.18.1.running_var`, `classifier.1.weight`), so a
//! torchvision state_dict loads with no renaming.

use super::network::{LinearSpec, NetworkSpec, StageSpec, TORCHVISION_LINEAR_INIT};
use super::{make_divisible, ModelConfig};
use crate::nn::BatchNormConfig;
use crate::nn::{Activation, BlockSpec, ConvSpec, UnitSpec};
use crate::{Error, Result};

/// t (expansion), c (output channels), n (repeats), s (first stride): the paper's Table 2.
pub const INVERTED_RESIDUAL_SETTING: [[i64; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];

const INPUT_CHANNEL: f64 = 32.0;
const LAST_CHANNEL: f64 = 1280.0;

/// torchvision's `Conv2dNormActivation` at `features.{i}` (conv `.0`, norm `.1`), ReLU6.
fn conv_bn(inp: i64, oup: i64, kernel: i64, stride: i64) -> BlockSpec {
    BlockSpec {
        units: vec![UnitSpec::conv(
            "0",
            "1",
            ConvSpec::new(inp, oup, kernel, stride),
        )],
        residual: false,
        bn: BatchNormConfig::default(),
    }
}

/// The inverted residual block (`features.{i}.conv`): 1x1 expansion to `inp * expand_ratio`
/// with ReLU6 (absent when `expand_ratio == 1`), 3x3 depthwise with ReLU6, 1x1 linear
/// projection (no activation), and a shortcut only when stride is 1 and the input and output
/// channels are equal.
pub fn inverted_residual(inp: i64, oup: i64, stride: i64, expand_ratio: i64) -> Result<BlockSpec> {
    if stride != 1 && stride != 2 {
        return Err(Error::config(
            "stride",
            format!("should be 1 or 2 instead of {stride}"),
        ));
    }
    let hidden_dim = (inp as f64 * expand_ratio as f64).round() as i64;
    let mut units = Vec::new();
    if expand_ratio != 1 {
        units.push(UnitSpec::conv(
            "conv.0.0",
            "conv.0.1",
            ConvSpec::new(inp, hidden_dim, 1, 1),
        ));
    }
    let i = units.len();
    units.push(UnitSpec::conv(
        format!("conv.{i}.0"),
        format!("conv.{i}.1"),
        ConvSpec::depthwise(hidden_dim, 3, stride),
    ));
    units.push(UnitSpec::conv(
        format!("conv.{}", i + 1),
        format!("conv.{}", i + 2),
        ConvSpec::new(hidden_dim, oup, 1, 1).act(Activation::Identity),
    ));
    Ok(BlockSpec {
        units,
        residual: stride == 1 && inp == oup,
        bn: BatchNormConfig::default(),
    })
}

/// torchvision's `MobileNetV2`: `features` (stem, 17 inverted residuals, last conv), global
/// average pooling, `classifier` (dropout, linear `classifier.1`). Stage maps `features.{i}`.
///
/// Input `[N, 3, H, W]` (H, W >= 32), output logits `[N, num_classes]`.
pub fn describe(cfg: &ModelConfig) -> Result<NetworkSpec> {
    let round = cfg.round_nearest;
    let mut input_channel = make_divisible(INPUT_CHANNEL * cfg.width_mult, round);
    let last_channel = make_divisible(LAST_CHANNEL * cfg.width_mult.max(1.0), round);
    let mut specs = vec![conv_bn(3, input_channel, 3, 2)];
    for [t, c, n, s] in INVERTED_RESIDUAL_SETTING {
        let output_channel = make_divisible(c as f64 * cfg.width_mult, round);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            specs.push(inverted_residual(input_channel, output_channel, stride, t)?);
            input_channel = output_channel;
        }
    }
    specs.push(conv_bn(input_channel, last_channel, 1, 1));
    Ok(NetworkSpec {
        stages: StageSpec::features(specs),
        head: vec![LinearSpec {
            path: "classifier.1",
            inp: last_channel,
            out: cfg.num_classes,
            init: TORCHVISION_LINEAR_INIT,
            activation: Activation::Identity,
        }],
        dropout: cfg.dropout,
    })
}
