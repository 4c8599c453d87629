//! MobileNet V2 exactly as torchvision builds it (`torchvision/models/mobilenetv2.py`): Sandler et
//! al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (2018).
//!
//! Var-store paths are torchvision's state_dict keys (`features.0.0.weight`,
//! `features.1.conv.0.0.weight`, ..., `features.18.1.running_var`, `classifier.1.weight`), so a
//! torchvision state_dict loads with no renaming.

use super::graph::{self, Step};
use super::{
    dropout, forward_features, global_pool, make_divisible, Block, Classifier, Feature, LayerRow,
    ModelConfig, Stage,
};
use crate::nn::conv::{check_channels, dotted, Activation, ConvNormAct, ConvSpec};
use crate::nn::BatchNormConfig;
use crate::{Error, Result};
use tch::{nn, Tensor};

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

/// The inverted residual block: 1x1 expansion (when `expand_ratio != 1`), 3x3 depthwise, 1x1
/// linear projection (no activation), and a shortcut only when stride is 1 and the input and
/// output channels are equal.
#[derive(Debug)]
pub struct InvertedResidual {
    /// `conv.0`: 1x1 expansion to `hidden_dim` with ReLU6, absent when `expand_ratio == 1`.
    pub conv_pw: Option<ConvNormAct>,
    /// 3x3 depthwise conv with ReLU6.
    pub conv_dw: ConvNormAct,
    /// 1x1 linear projection to the output channels (the linear bottleneck).
    pub conv_pwl: ConvNormAct,
    pub has_skip: bool,
    pub expand_ratio: i64,
    pub hidden_dim: i64,
    pub name: String,
}

impl InvertedResidual {
    /// `p` is the block's path (`features.{i}`); its layers live under `p.conv`.
    pub fn new(
        p: nn::Path,
        inp: i64,
        oup: i64,
        stride: i64,
        expand_ratio: i64,
        cfg: &ModelConfig,
    ) -> Result<Self> {
        if stride != 1 && stride != 2 {
            return Err(Error::config(
                "stride",
                format!("should be 1 or 2 instead of {stride}"),
            ));
        }
        let name = dotted(&p);
        let hidden_dim = (inp as f64 * expand_ratio as f64).round() as i64;
        let conv = &p / "conv";
        let bn = BatchNormConfig::default();
        let mut i = 0;
        let conv_pw = if expand_ratio != 1 {
            let unit = &conv / i;
            i += 1;
            Some(ConvNormAct::new(
                &unit / 0,
                &unit / 1,
                ConvSpec::new(inp, hidden_dim, 1, 1),
                &cfg.norm,
                bn,
            )?)
        } else {
            None
        };
        let unit = &conv / i;
        let conv_dw = ConvNormAct::new(
            &unit / 0,
            &unit / 1,
            ConvSpec::depthwise(hidden_dim, 3, stride),
            &cfg.norm,
            bn,
        )?;
        let conv_pwl = ConvNormAct::new(
            &conv / (i + 1),
            &conv / (i + 2),
            ConvSpec::new(hidden_dim, oup, 1, 1).act(Activation::Identity),
            &cfg.norm,
            bn,
        )?;
        Ok(InvertedResidual {
            conv_pw,
            conv_dw,
            conv_pwl,
            has_skip: stride == 1 && inp == oup,
            expand_ratio,
            hidden_dim,
            name,
        })
    }
}

impl Block for InvertedResidual {
    fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = match &self.conv_pw {
            Some(pw) => self
                .conv_dw
                .f_forward_t(&pw.f_forward_t(xs, train)?, train)?,
            None => self.conv_dw.f_forward_t(xs, train)?,
        };
        if self.has_skip {
            self.conv_pwl.f_forward_add(&ys, xs, train)
        } else {
            self.conv_pwl.f_forward_t(&ys, train)
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

/// torchvision's `MobileNetV2`: `features` (stem, 17 inverted residuals, last conv), global
/// average pooling, `classifier` (dropout, linear).
///
/// Input `[N, 3, H, W]` (H, W >= 32), output logits `[N, num_classes]`.
#[derive(Debug)]
pub struct MobileNetV2 {
    pub features: Vec<Feature<InvertedResidual>>,
    /// `classifier.1`: `[num_classes, last_channel]`.
    pub fc_weight: Tensor,
    pub fc_bias: Tensor,
    pub last_channel: i64,
    pub dropout: f64,
}

impl MobileNetV2 {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let round = cfg.round_nearest;
        let mut input_channel = make_divisible(INPUT_CHANNEL * cfg.width_mult, round);
        let last_channel = make_divisible(LAST_CHANNEL * cfg.width_mult.max(1.0), round);
        let feats = p / "features";
        let bn = BatchNormConfig::default();
        let mut features = vec![Feature::Conv(ConvNormAct::new(
            &feats / 0 / 0,
            &feats / 0 / 1,
            ConvSpec::new(3, input_channel, 3, 2),
            &cfg.norm,
            bn,
        )?)];
        for [t, c, n, s] in INVERTED_RESIDUAL_SETTING {
            let output_channel = make_divisible(c as f64 * cfg.width_mult, round);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let block = InvertedResidual::new(
                    &feats / features.len(),
                    input_channel,
                    output_channel,
                    stride,
                    t,
                    cfg,
                )?;
                features.push(Feature::Block(block));
                input_channel = output_channel;
            }
        }
        let i = features.len();
        features.push(Feature::Conv(ConvNormAct::new(
            &feats / i / 0,
            &feats / i / 1,
            ConvSpec::new(input_channel, last_channel, 1, 1),
            &cfg.norm,
            bn,
        )?));
        let cls = p / "classifier" / 1;
        let fc_weight = cls.f_var(
            "weight",
            &[cfg.num_classes, last_channel],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        )?;
        let fc_bias = cls.f_zeros("bias", &[cfg.num_classes])?;
        Ok(MobileNetV2 {
            features,
            fc_weight,
            fc_bias,
            last_channel,
            dropout: cfg.dropout,
        })
    }
}

impl Classifier for MobileNetV2 {
    fn forward_stages(&self, xs: &Tensor, train: bool, keep: bool) -> Result<Vec<Stage>> {
        check_channels("MobileNetV2 input", xs, 3)?;
        forward_features(&self.features, xs, train, keep)
    }

    fn forward_head(&self, features: &Tensor, train_dropout: bool) -> Result<Tensor> {
        let x = dropout(global_pool(features)?, self.dropout, train_dropout)?;
        Ok(x.f_linear(&self.fc_weight, Some(&self.fc_bias))?)
    }

    fn graph_program(&self) -> Option<graph::Program<'_>> {
        let mut steps = Vec::new();
        for feature in &self.features {
            match feature {
                Feature::Conv(c) => steps.push(Step::Conv(c)),
                Feature::Block(b) => {
                    if b.has_skip {
                        steps.push(Step::ResidualStart);
                    }
                    steps.extend(b.units().into_iter().map(Step::Conv));
                    if b.has_skip {
                        steps.push(Step::ResidualEnd);
                    }
                }
            }
        }
        Some(graph::Program {
            steps,
            head: vec![graph::Linear::plain(&self.fc_weight, &self.fc_bias)],
        })
    }

    fn units(&self) -> Vec<&ConvNormAct> {
        self.features.iter().flat_map(Feature::units).collect()
    }

    fn units_mut(&mut self) -> Vec<&mut ConvNormAct> {
        self.features
            .iter_mut()
            .flat_map(Feature::units_mut)
            .collect()
    }

    fn head_rows(&self) -> Vec<LayerRow> {
        vec![LayerRow::linear("classifier.1", &self.fc_weight)]
    }
}
