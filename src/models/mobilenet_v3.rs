//! MobileNet V3 Large and Small exactly as torchvision builds them
//! (`torchvision/models/mobilenetv3.py`): Howard et al., "Searching for MobileNetV3" (2019).
//!
//! Inverted residuals with optional squeeze-and-excitation (torchvision's `SqueezeExcitation`
//! with a hardsigmoid gate), hardswish or ReLU per the configuration table, BatchNorm with
//! eps 0.001 and momentum 0.01, a last 1x1 conv to 6x the last block's channels, and the
//! classifier Linear → Hardswish → Dropout → Linear. Var-store paths are torchvision's keys
//! (`features.{i}.block.{j}.0.weight`, `features.{i}.block.{j}.fc1.bias`, `classifier.3.weight`).

use super::network::{LinearSpec, NetworkSpec, StageSpec, TORCHVISION_LINEAR_INIT};
use super::{make_divisible, ModelConfig};
use crate::nn::{Activation, BatchNormConfig, BlockSpec, ConvSpec, UnitSpec};
use crate::Result;

/// One row of the paper's Tables 1 and 2: input channels, kernel, expanded channels, output
/// channels, squeeze-excite, hardswish (else ReLU), stride, and whether the block is in the
/// dilatable tail (C4 onward).
#[derive(Debug, Clone, Copy)]
pub struct BneckConf {
    pub input_channels: i64,
    pub kernel: i64,
    pub expanded_channels: i64,
    pub out_channels: i64,
    pub use_se: bool,
    pub use_hs: bool,
    pub stride: i64,
    /// Part of the tail that `reduced_tail` halves and `dilated` dilates.
    pub tail: bool,
}

// One table row per call keeps the tables readable as the paper's.
#[allow(clippy::too_many_arguments)]
const fn b(i: i64, k: i64, e: i64, o: i64, se: bool, hs: bool, s: i64, tail: bool) -> BneckConf {
    BneckConf {
        input_channels: i,
        kernel: k,
        expanded_channels: e,
        out_channels: o,
        use_se: se,
        use_hs: hs,
        stride: s,
        tail,
    }
}

/// MobileNet V3 Large (Table 1). Tail rows have their channels halved by `reduced_tail`.
pub const LARGE: [BneckConf; 15] = [
    b(16, 3, 16, 16, false, false, 1, false),
    b(16, 3, 64, 24, false, false, 2, false),
    b(24, 3, 72, 24, false, false, 1, false),
    b(24, 5, 72, 40, true, false, 2, false),
    b(40, 5, 120, 40, true, false, 1, false),
    b(40, 5, 120, 40, true, false, 1, false),
    b(40, 3, 240, 80, false, true, 2, false),
    b(80, 3, 200, 80, false, true, 1, false),
    b(80, 3, 184, 80, false, true, 1, false),
    b(80, 3, 184, 80, false, true, 1, false),
    b(80, 3, 480, 112, true, true, 1, false),
    b(112, 3, 672, 112, true, true, 1, false),
    b(112, 5, 672, 160, true, true, 2, true),
    b(160, 5, 960, 160, true, true, 1, true),
    b(160, 5, 960, 160, true, true, 1, true),
];
pub const LARGE_LAST_CHANNEL: i64 = 1280;

/// MobileNet V3 Small (Table 2).
pub const SMALL: [BneckConf; 11] = [
    b(16, 3, 16, 16, true, false, 2, false),
    b(16, 3, 72, 24, false, false, 2, false),
    b(24, 3, 88, 24, false, false, 1, false),
    b(24, 5, 96, 40, true, true, 2, false),
    b(40, 5, 240, 40, true, true, 1, false),
    b(40, 5, 240, 40, true, true, 1, false),
    b(40, 5, 120, 48, true, true, 1, false),
    b(48, 5, 144, 48, true, true, 1, false),
    b(48, 5, 288, 96, true, true, 2, true),
    b(96, 5, 576, 96, true, true, 1, true),
    b(96, 5, 576, 96, true, true, 1, true),
];
pub const SMALL_LAST_CHANNEL: i64 = 1024;

/// The inverted residual of V3 (`features.{i}.block`): 1x1 expansion (when the expanded
/// channels differ from the input's), kxk depthwise (dilated instead of strided when
/// `dilation > 1`), squeeze-excitation to `make_divisible(expanded / 4, 8)` channels when
/// `use_se`, 1x1 linear projection; hardswish or ReLU per the table; a shortcut when stride is 1
/// and the input and output channels are equal. `c` holds channels already scaled by the width.
pub fn inverted_residual(c: &BneckConf, dilation: i64) -> BlockSpec {
    let act = if c.use_hs {
        Activation::Hardswish
    } else {
        Activation::Relu
    };
    let mut units = Vec::new();
    if c.expanded_channels != c.input_channels {
        let spec = ConvSpec::new(c.input_channels, c.expanded_channels, 1, 1).act(act);
        units.push(UnitSpec::conv("block.0.0", "block.0.1", spec));
    }
    let stride = if dilation > 1 { 1 } else { c.stride };
    let j = units.len();
    units.push(UnitSpec::conv(
        format!("block.{j}.0"),
        format!("block.{j}.1"),
        ConvSpec::depthwise(c.expanded_channels, c.kernel, stride)
            .act(act)
            .dilation(dilation),
    ));
    if c.use_se {
        units.push(UnitSpec::SqueezeExcite {
            path: format!("block.{}", units.len()),
            channels: c.expanded_channels,
            squeeze_channels: make_divisible((c.expanded_channels / 4) as f64, 8),
        });
    }
    let j = units.len();
    units.push(UnitSpec::conv(
        format!("block.{j}.0"),
        format!("block.{j}.1"),
        ConvSpec::new(c.expanded_channels, c.out_channels, 1, 1).act(Activation::Identity),
    ));
    BlockSpec {
        units,
        residual: c.stride == 1 && c.input_channels == c.out_channels,
        bn: v3_batch_norm(),
    }
}

/// A `Conv2dNormActivation` with hardswish at `features.{i}` (the stem and the last conv).
fn conv_bn_hardswish(inp: i64, oup: i64, kernel: i64, stride: i64) -> BlockSpec {
    BlockSpec {
        units: vec![UnitSpec::conv(
            "0",
            "1",
            ConvSpec::new(inp, oup, kernel, stride).act(Activation::Hardswish),
        )],
        residual: false,
        bn: v3_batch_norm(),
    }
}

/// torchvision's V3 norm: `BatchNorm2d(eps=0.001, momentum=0.01)`.
fn v3_batch_norm() -> BatchNormConfig {
    BatchNormConfig {
        eps: 0.001,
        momentum: Some(0.01),
        ..BatchNormConfig::default()
    }
}

/// The table with the width multiplier and `reduced_tail` applied: torchvision divides the
/// tail's channels (and the input of the block after the first tail block) by
/// `reduce_divider` before scaling by the width.
fn scaled(table: &[BneckConf], cfg: &ModelConfig, divider: i64) -> Vec<BneckConf> {
    let adjust = |c: i64| make_divisible(c as f64 * cfg.width_mult, 8);
    table
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let tail_in = c.tail && table[i.saturating_sub(1)].tail;
            let div_in = if tail_in { divider } else { 1 };
            let div_out = if c.tail { divider } else { 1 };
            BneckConf {
                input_channels: adjust(c.input_channels / div_in),
                expanded_channels: adjust(c.expanded_channels / div_in),
                out_channels: adjust(c.out_channels / div_out),
                ..*c
            }
        })
        .collect()
}

/// torchvision's `mobilenet_v3_large`.
pub fn describe_large(cfg: &ModelConfig) -> Result<NetworkSpec> {
    describe(cfg, &LARGE, LARGE_LAST_CHANNEL)
}

/// torchvision's `mobilenet_v3_small`.
pub fn describe_small(cfg: &ModelConfig) -> Result<NetworkSpec> {
    describe(cfg, &SMALL, SMALL_LAST_CHANNEL)
}

/// torchvision's `MobileNetV3` from a table: `features` (stem, the table's blocks, a last 1x1
/// conv to 6x the last block's channels; stage maps `features.{i}`), pooling, `classifier`
/// (`classifier.0` Linear → Hardswish → Dropout → `classifier.3` Linear). `cfg.reduced_tail`
/// halves the tail's channels, `cfg.dilated` dilates its depthwise convs (for segmentation
/// backbones).
///
/// Input `[N, 3, H, W]`, logits `[N, num_classes]`.
fn describe(cfg: &ModelConfig, table: &[BneckConf], last_channel: i64) -> Result<NetworkSpec> {
    let divider = if cfg.reduced_tail { 2 } else { 1 };
    let dilation = if cfg.dilated { 2 } else { 1 };
    let confs = scaled(table, cfg, divider);
    let last_channel = make_divisible((last_channel / divider) as f64 * cfg.width_mult, 8);
    let first = confs[0].input_channels;
    let mut specs = vec![conv_bn_hardswish(3, first, 3, 2)];
    for c in &confs {
        specs.push(inverted_residual(c, if c.tail { dilation } else { 1 }));
    }
    let lastconv_in = confs.last().map_or(first, |c| c.out_channels);
    let lastconv_out = 6 * lastconv_in;
    specs.push(conv_bn_hardswish(lastconv_in, lastconv_out, 1, 1));
    let linear = |path, inp, out, activation| LinearSpec {
        path,
        inp,
        out,
        init: TORCHVISION_LINEAR_INIT,
        activation,
    };
    Ok(NetworkSpec {
        stages: StageSpec::features(specs),
        head: vec![
            linear(
                "classifier.0",
                lastconv_out,
                last_channel,
                Activation::Hardswish,
            ),
            linear(
                "classifier.3",
                last_channel,
                cfg.num_classes,
                Activation::Identity,
            ),
        ],
        dropout: cfg.dropout,
    })
}
