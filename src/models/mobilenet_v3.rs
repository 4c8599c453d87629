//! MobileNet V3 Large and Small exactly as torchvision builds them
//! (`torchvision/models/mobilenetv3.py`): Howard et al., "Searching for MobileNetV3" (2019).
//!
//! Inverted residuals with optional squeeze-and-excitation (torchvision's `SqueezeExcitation`
//! with a hardsigmoid gate), hardswish or ReLU per the configuration table, BatchNorm with
//! eps 0.001 and momentum 0.01, a last 1x1 conv to 6x the last block's channels, and the
//! classifier Linear → Hardswish → Dropout → Linear. Var-store paths are torchvision's keys
//! (`features.{i}.block.{j}.0.weight`, `features.{i}.block.{j}.fc1.bias`, `classifier.3.weight`).

use super::graph::{self, Step};
use super::summary::SummaryUnit;
use super::{
    dropout, forward_features, global_pool, make_divisible, Block, Classifier, Feature, LayerRow,
    ModelConfig, Stage,
};
use crate::nn::conv::{check_channels, dotted, Activation, ConvNormAct, ConvSpec};
use crate::nn::BatchNormConfig;
use crate::{Error, Result};
use tch::{nn, Tensor};

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

/// Squeeze-and-excitation: global average pool, 1x1 conv `fc1` + ReLU, 1x1 conv `fc2` +
/// hardsigmoid, then scale the input channel-wise.
#[derive(Debug)]
pub struct SqueezeExcitation {
    pub fc1_weight: Tensor,
    pub fc1_bias: Tensor,
    pub fc2_weight: Tensor,
    pub fc2_bias: Tensor,
    pub channels: i64,
    pub squeeze_channels: i64,
    pub name: String,
}

impl SqueezeExcitation {
    pub fn new(p: nn::Path, channels: i64, squeeze_channels: i64) -> Result<Self> {
        let init = nn::init::DEFAULT_KAIMING_UNIFORM;
        let fc1 = &p / "fc1";
        let fc2 = &p / "fc2";
        Ok(SqueezeExcitation {
            fc1_weight: fc1.f_var("weight", &[squeeze_channels, channels, 1, 1], init)?,
            fc1_bias: fc1.f_zeros("bias", &[squeeze_channels])?,
            fc2_weight: fc2.f_var("weight", &[channels, squeeze_channels, 1, 1], init)?,
            fc2_bias: fc2.f_zeros("bias", &[channels])?,
            channels,
            squeeze_channels,
            name: dotted(&p),
        })
    }

    pub fn f_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let s = xs.f_adaptive_avg_pool2d([1, 1])?;
        let s = s.f_conv2d(
            &self.fc1_weight,
            Some(&self.fc1_bias),
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )?;
        let s = s.f_relu()?;
        let s = s.f_conv2d(
            &self.fc2_weight,
            Some(&self.fc2_bias),
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )?;
        Ok(s.f_hardsigmoid()? * xs)
    }

    pub fn parameter_count(&self) -> i64 {
        2 * self.channels * self.squeeze_channels + self.channels + self.squeeze_channels
    }
}

/// The V3 inverted residual: optional 1x1 expansion, kxk depthwise, optional SE, 1x1 linear
/// projection; a shortcut when stride is 1 and input and output channels are equal.
#[derive(Debug)]
pub struct InvertedResidual {
    pub conv_pw: Option<ConvNormAct>,
    pub conv_dw: ConvNormAct,
    pub se: Option<SqueezeExcitation>,
    pub conv_pwl: ConvNormAct,
    pub has_skip: bool,
    pub name: String,
}

impl InvertedResidual {
    /// `c` holds channels already scaled by the width multiplier; `dilation` applies to the
    /// depthwise conv (whose stride is then 1).
    pub fn new(p: nn::Path, c: &BneckConf, dilation: i64, cfg: &ModelConfig) -> Result<Self> {
        let bn = v3_batch_norm();
        let act = if c.use_hs {
            Activation::Hardswish
        } else {
            Activation::Relu
        };
        let block = &p / "block";
        let mut j = 0;
        let conv_pw = if c.expanded_channels != c.input_channels {
            j += 1;
            Some(ConvNormAct::new(
                &block / 0 / 0,
                &block / 0 / 1,
                ConvSpec::new(c.input_channels, c.expanded_channels, 1, 1).act(act),
                &cfg.norm,
                bn,
            )?)
        } else {
            None
        };
        let stride = if dilation > 1 { 1 } else { c.stride };
        let conv_dw = ConvNormAct::new(
            &block / j / 0,
            &block / j / 1,
            ConvSpec::depthwise(c.expanded_channels, c.kernel, stride)
                .act(act)
                .dilation(dilation),
            &cfg.norm,
            bn,
        )?;
        j += 1;
        let se = if c.use_se {
            let squeeze = make_divisible((c.expanded_channels / 4) as f64, 8);
            j += 1;
            Some(SqueezeExcitation::new(
                &block / (j - 1),
                c.expanded_channels,
                squeeze,
            )?)
        } else {
            None
        };
        let conv_pwl = ConvNormAct::new(
            &block / j / 0,
            &block / j / 1,
            ConvSpec::new(c.expanded_channels, c.out_channels, 1, 1).act(Activation::Identity),
            &cfg.norm,
            bn,
        )?;
        Ok(InvertedResidual {
            conv_pw,
            conv_dw,
            se,
            conv_pwl,
            has_skip: c.stride == 1 && c.input_channels == c.out_channels,
            name: dotted(&p),
        })
    }
}

impl Block for InvertedResidual {
    fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = match &self.conv_pw {
            Some(pw) => pw.f_forward_t(xs, train)?,
            None => xs.shallow_clone(),
        };
        y = self.conv_dw.f_forward_t(&y, train)?;
        if let Some(se) = &self.se {
            y = se.f_forward(&y)?;
        }
        if self.has_skip {
            self.conv_pwl.f_forward_add(&y, xs, train)
        } else {
            self.conv_pwl.f_forward_t(&y, train)
        }
    }

    fn units(&self) -> Vec<&ConvNormAct> {
        self.conv_pw
            .iter()
            .chain([&self.conv_dw, &self.conv_pwl])
            .collect()
    }

    fn units_mut(&mut self) -> Vec<&mut ConvNormAct> {
        self.conv_pw
            .iter_mut()
            .chain([&mut self.conv_dw, &mut self.conv_pwl])
            .collect()
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

/// torchvision's `MobileNetV3` (`mobilenet_v3_large` / `mobilenet_v3_small`).
///
/// Input `[N, 3, H, W]`, logits `[N, num_classes]`.
#[derive(Debug)]
pub struct MobileNetV3 {
    pub features: Vec<Feature<InvertedResidual>>,
    /// `classifier.0`: `[last_channel, lastconv_channels]`.
    pub fc1_weight: Tensor,
    pub fc1_bias: Tensor,
    /// `classifier.3`: `[num_classes, last_channel]`.
    pub fc2_weight: Tensor,
    pub fc2_bias: Tensor,
    pub dropout: f64,
}

impl MobileNetV3 {
    /// `large` picks Table 1, else Table 2. `cfg.reduced_tail` halves the tail's channels,
    /// `cfg.dilated` dilates its depthwise convs (for segmentation backbones).
    pub fn new(p: &nn::Path, cfg: &ModelConfig, large: bool) -> Result<Self> {
        let (table, last): (&[BneckConf], i64) = if large {
            (&LARGE, LARGE_LAST_CHANNEL)
        } else {
            (&SMALL, SMALL_LAST_CHANNEL)
        };
        let divider = if cfg.reduced_tail { 2 } else { 1 };
        let dilation = if cfg.dilated { 2 } else { 1 };
        let adjust = |c: i64| make_divisible(c as f64 * cfg.width_mult, 8);
        let confs: Vec<BneckConf> = table
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // torchvision divides the tail's channels (and the input of the block after the
                // first tail block) by `reduce_divider` before scaling by the width.
                let tail_in = c.tail && table[i.saturating_sub(1)].tail;
                BneckConf {
                    input_channels: adjust(if tail_in {
                        c.input_channels / divider
                    } else {
                        c.input_channels
                    }),
                    expanded_channels: adjust(if tail_in {
                        c.expanded_channels / divider
                    } else {
                        c.expanded_channels
                    }),
                    out_channels: adjust(if c.tail {
                        c.out_channels / divider
                    } else {
                        c.out_channels
                    }),
                    ..*c
                }
            })
            .collect();
        let last_channel = adjust(last / divider);
        let feats = p / "features";
        let first = confs[0].input_channels;
        let mut features = vec![Feature::Conv(ConvNormAct::new(
            &feats / 0 / 0,
            &feats / 0 / 1,
            ConvSpec::new(3, first, 3, 2).act(Activation::Hardswish),
            &cfg.norm,
            v3_batch_norm(),
        )?)];
        for c in &confs {
            let d = if c.tail { dilation } else { 1 };
            let block = InvertedResidual::new(&feats / features.len(), c, d, cfg)?;
            features.push(Feature::Block(block));
        }
        let lastconv_in = confs.last().map(|c| c.out_channels).unwrap_or(first);
        let lastconv_out = 6 * lastconv_in;
        let i = features.len();
        features.push(Feature::Conv(ConvNormAct::new(
            &feats / i / 0,
            &feats / i / 1,
            ConvSpec::new(lastconv_in, lastconv_out, 1, 1).act(Activation::Hardswish),
            &cfg.norm,
            v3_batch_norm(),
        )?));
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let cls = p / "classifier";
        let fc1 = &cls / 0;
        let fc2 = &cls / 3;
        if cfg.num_classes < 1 {
            return Err(Error::config("num_classes", "must be >= 1"));
        }
        Ok(MobileNetV3 {
            features,
            fc1_weight: fc1.f_var("weight", &[last_channel, lastconv_out], init)?,
            fc1_bias: fc1.f_zeros("bias", &[last_channel])?,
            fc2_weight: fc2.f_var("weight", &[cfg.num_classes, last_channel], init)?,
            fc2_bias: fc2.f_zeros("bias", &[cfg.num_classes])?,
            dropout: cfg.dropout,
        })
    }
}

impl Classifier for MobileNetV3 {
    fn forward_stages(&self, xs: &Tensor, train: bool, keep: bool) -> Result<Vec<Stage>> {
        check_channels("MobileNetV3 input", xs, 3)?;
        forward_features(&self.features, xs, train, keep)
    }

    fn forward_head(&self, features: &Tensor, train_dropout: bool) -> Result<Tensor> {
        // classifier: Linear → Hardswish → Dropout → Linear.
        let x = global_pool(features)?;
        let x = x
            .f_linear(&self.fc1_weight, Some(&self.fc1_bias))?
            .f_hardswish()?;
        let x = dropout(x, self.dropout, train_dropout)?;
        Ok(x.f_linear(&self.fc2_weight, Some(&self.fc2_bias))?)
    }

    fn graph_program(&self) -> Option<graph::Program<'_>> {
        let mut steps = Vec::new();
        for f in &self.features {
            match f {
                Feature::Conv(c) => steps.push(Step::Conv(c)),
                Feature::Block(b) => {
                    if b.has_skip {
                        steps.push(Step::ResidualStart);
                    }
                    steps.extend(b.conv_pw.iter().map(Step::Conv));
                    steps.push(Step::Conv(&b.conv_dw));
                    steps.extend(b.se.iter().map(Step::SqueezeExcite));
                    steps.push(Step::Conv(&b.conv_pwl));
                    if b.has_skip {
                        steps.push(Step::ResidualEnd);
                    }
                }
            }
        }
        Some(graph::Program {
            steps,
            head: vec![
                graph::Linear {
                    weight: &self.fc1_weight,
                    bias: &self.fc1_bias,
                    activation: Activation::Hardswish,
                },
                graph::Linear::plain(&self.fc2_weight, &self.fc2_bias),
            ],
        })
    }

    fn units(&self) -> Vec<&ConvNormAct> {
        self.summary_units()
            .into_iter()
            .filter_map(|u| match u {
                SummaryUnit::Conv(c) => Some(c),
                SummaryUnit::SqueezeExcite(_) => None,
            })
            .collect()
    }

    fn units_mut(&mut self) -> Vec<&mut ConvNormAct> {
        self.features
            .iter_mut()
            .flat_map(Feature::units_mut)
            .collect()
    }

    fn summary_units(&self) -> Vec<SummaryUnit<'_>> {
        let mut out = Vec::new();
        for f in &self.features {
            match f {
                Feature::Conv(c) => out.push(SummaryUnit::Conv(c)),
                Feature::Block(b) => {
                    out.extend(b.conv_pw.iter().map(SummaryUnit::Conv));
                    out.push(SummaryUnit::Conv(&b.conv_dw));
                    out.extend(b.se.iter().map(SummaryUnit::SqueezeExcite));
                    out.push(SummaryUnit::Conv(&b.conv_pwl));
                }
            }
        }
        out
    }

    fn head_rows(&self) -> Vec<LayerRow> {
        vec![
            LayerRow::linear("classifier.0", &self.fc1_weight),
            LayerRow::linear("classifier.3", &self.fc2_weight),
        ]
    }
}
