//! MobileNet V1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
//! Vision Applications", 2017), structured and named like timm's `mobilenetv1_100` /
//! `mobilenetv1_125` (`timm/models/efficientnet.py`, `_gen_mobilenet_v1`), so timm checkpoints
//! load directly.
//!
//! Stem: 3x3 conv stride 2 to 32 channels (`conv_stem`, `bn1`), then 13 depthwise-separable
//! blocks in 5 stages (`blocks.{i}.{j}`: `conv_dw` + `bn1` + ReLU6, `conv_pw` + `bn2` + ReLU6),
//! global average pooling and a linear `classifier`. No residual connections.

use super::network::{LinearSpec, NetworkSpec, StageSpec};
use super::{make_divisible, ModelConfig};
use crate::nn::{Activation, BatchNormConfig, BlockSpec, ConvSpec, UnitSpec};
use crate::Result;
use tch::nn;

/// Per stage: (repeats, first stride, output channels), the paper's Table 1:
/// 64, 128/2, 128, 256/2, 256, 512/2, 5x512, 1024/2, 1024.
pub const STAGES: [(i64, i64, i64); 5] = [
    (1, 1, 64),
    (2, 2, 128),
    (2, 2, 256),
    (6, 2, 512),
    (2, 2, 1024),
];

const STEM_CHANNELS: f64 = 32.0;

/// The stem: `conv_stem` + `bn1` + ReLU6, 3x3 stride 2 (the stage map `bn1`).
fn stem(channels: i64) -> BlockSpec {
    BlockSpec {
        units: vec![UnitSpec::conv(
            "conv_stem",
            "bn1",
            ConvSpec::new(3, channels, 3, 2),
        )],
        residual: false,
        bn: BatchNormConfig::default(),
    }
}

/// A depthwise-separable convolution: 3x3 depthwise (`conv_dw`, `bn1`, ReLU6) then 1x1
/// pointwise (`conv_pw`, `bn2`, ReLU6). timm's `DepthwiseSeparableConv` with `pw_act=True`; no
/// residual.
pub fn depthwise_separable(inp: i64, oup: i64, stride: i64) -> BlockSpec {
    BlockSpec {
        units: vec![
            UnitSpec::conv("conv_dw", "bn1", ConvSpec::depthwise(inp, 3, stride)),
            UnitSpec::conv("conv_pw", "bn2", ConvSpec::new(inp, oup, 1, 1)),
        ],
        residual: false,
        bn: BatchNormConfig::default(),
    }
}

/// timm's `mobilenetv1_*`: stem, `blocks.{stage}.{block}` (stage maps `bn1`, `blocks.{i}`),
/// global average pooling, linear `classifier`.
///
/// Input `[N, 3, H, W]`, logits `[N, num_classes]`.
pub fn describe(cfg: &ModelConfig) -> Result<NetworkSpec> {
    let round = |c: f64| make_divisible(c * cfg.width_mult, cfg.round_nearest);
    let stem_channels = round(STEM_CHANNELS);
    let mut stages = vec![StageSpec {
        name: "bn1".into(),
        blocks: vec![(String::new(), stem(stem_channels))],
    }];
    let mut inp = stem_channels;
    for (i, &(n, s, c)) in STAGES.iter().enumerate() {
        let oup = round(c as f64);
        let mut blocks = Vec::new();
        for j in 0..n {
            let stride = if j == 0 { s } else { 1 };
            blocks.push((
                format!("blocks.{i}.{j}"),
                depthwise_separable(inp, oup, stride),
            ));
            inp = oup;
        }
        stages.push(StageSpec {
            name: format!("blocks.{i}"),
            blocks,
        });
    }
    // timm's `_init_weight_goog` for the classifier: uniform(-1/sqrt(in), 1/sqrt(in)).
    let bound = 1.0 / (inp as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    Ok(NetworkSpec {
        stages,
        head: vec![LinearSpec {
            path: "classifier",
            inp,
            out: cfg.num_classes,
            init,
            activation: Activation::Identity,
        }],
        dropout: cfg.dropout,
    })
}
