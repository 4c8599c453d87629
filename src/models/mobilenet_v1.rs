//! MobileNet V1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
//! Vision Applications", 2017), structured and named like timm's `mobilenetv1_100` /
//! `mobilenetv1_125` (`timm/models/efficientnet.py`, `_gen_mobilenet_v1`), so timm checkpoints
//! load directly.
//!
//! Stem: 3x3 conv stride 2 to 32 channels (`conv_stem`, `bn1`), then 13 depthwise-separable
//! blocks in 5 stages (`blocks.{i}.{j}`: `conv_dw` + `bn1` + ReLU6, `conv_pw` + `bn2` + ReLU6),
//! global average pooling and a linear `classifier`. No residual connections.

use super::{
    dropout, global_pool, graph, make_divisible, Classifier, LayerRow, ModelConfig, Stage,
};
use crate::nn::conv::{check_channels, dotted, ConvNormAct, ConvSpec};
use crate::nn::BatchNormConfig;
use crate::Result;
use tch::{nn, Tensor};

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

/// A depthwise-separable convolution: 3x3 depthwise (`conv_dw`, `bn1`, ReLU6) then 1x1
/// pointwise (`conv_pw`, `bn2`, ReLU6). timm's `DepthwiseSeparableConv` with `pw_act=True`.
#[derive(Debug)]
pub struct DepthwiseSeparable {
    pub conv_dw: ConvNormAct,
    pub conv_pw: ConvNormAct,
    pub name: String,
}

impl DepthwiseSeparable {
    pub fn new(p: nn::Path, inp: i64, oup: i64, stride: i64, cfg: &ModelConfig) -> Result<Self> {
        let bn = BatchNormConfig::default();
        let conv_dw = ConvNormAct::new(
            &p / "conv_dw",
            &p / "bn1",
            ConvSpec::depthwise(inp, 3, stride),
            &cfg.norm,
            bn,
        )?;
        let conv_pw = ConvNormAct::new(
            &p / "conv_pw",
            &p / "bn2",
            ConvSpec::new(inp, oup, 1, 1),
            &cfg.norm,
            bn,
        )?;
        Ok(DepthwiseSeparable {
            conv_dw,
            conv_pw,
            name: dotted(&p),
        })
    }

    pub fn f_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.conv_pw
            .f_forward_t(&self.conv_dw.f_forward_t(xs, train)?, train)
    }
}

/// timm's `mobilenetv1_*`: input `[N, 3, H, W]`, logits `[N, num_classes]`.
#[derive(Debug)]
pub struct MobileNetV1 {
    /// `conv_stem` + `bn1` + ReLU6.
    pub stem: ConvNormAct,
    /// `blocks.{stage}.{block}`.
    pub blocks: Vec<Vec<DepthwiseSeparable>>,
    /// `classifier`: `[num_classes, num_features]`.
    pub fc_weight: Tensor,
    pub fc_bias: Tensor,
    pub num_features: i64,
    pub dropout: f64,
}

impl MobileNetV1 {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let round = |c: f64| make_divisible(c * cfg.width_mult, cfg.round_nearest);
        let stem_channels = round(STEM_CHANNELS);
        let stem = ConvNormAct::new(
            p / "conv_stem",
            p / "bn1",
            ConvSpec::new(3, stem_channels, 3, 2),
            &cfg.norm,
            BatchNormConfig::default(),
        )?;
        let mut inp = stem_channels;
        let mut blocks = Vec::new();
        for (i, &(n, s, c)) in STAGES.iter().enumerate() {
            let oup = round(c as f64);
            let mut stage = Vec::new();
            for j in 0..n {
                let stride = if j == 0 { s } else { 1 };
                stage.push(DepthwiseSeparable::new(
                    p / "blocks" / i / j,
                    inp,
                    oup,
                    stride,
                    cfg,
                )?);
                inp = oup;
            }
            blocks.push(stage);
        }
        let cls = p / "classifier";
        let bound = 1.0 / (inp as f64).sqrt();
        let fc_weight = cls.f_var(
            "weight",
            &[cfg.num_classes, inp],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let fc_bias = cls.f_zeros("bias", &[cfg.num_classes])?;
        Ok(MobileNetV1 {
            stem,
            blocks,
            fc_weight,
            fc_bias,
            num_features: inp,
            dropout: cfg.dropout,
        })
    }
}

impl Classifier for MobileNetV1 {
    fn forward_stages(&self, xs: &Tensor, train: bool, keep: bool) -> Result<Vec<Stage>> {
        check_channels("MobileNetV1 input", xs, 3)?;
        let mut stages = Vec::new();
        let mut x = self.stem.f_forward_t(xs, train)?;
        if keep {
            stages.push(Stage {
                name: "bn1".into(),
                tensor: x.shallow_clone(),
            });
        }
        for (i, stage) in self.blocks.iter().enumerate() {
            for block in stage {
                x = block.f_forward_t(&x, train)?;
            }
            if keep || i + 1 == self.blocks.len() {
                stages.push(Stage {
                    name: format!("blocks.{i}"),
                    tensor: x.shallow_clone(),
                });
            }
        }
        Ok(stages)
    }

    fn forward_head(&self, features: &Tensor, train_dropout: bool) -> Result<Tensor> {
        let x = dropout(global_pool(features)?, self.dropout, train_dropout)?;
        Ok(x.f_linear(&self.fc_weight, Some(&self.fc_bias))?)
    }

    fn graph_program(&self) -> Option<graph::Program<'_>> {
        Some(graph::Program {
            steps: self.units().into_iter().map(graph::Step::Conv).collect(),
            head: vec![graph::Linear::plain(&self.fc_weight, &self.fc_bias)],
        })
    }

    fn units(&self) -> Vec<&ConvNormAct> {
        let blocks = self
            .blocks
            .iter()
            .flatten()
            .flat_map(|b| [&b.conv_dw, &b.conv_pw]);
        std::iter::once(&self.stem).chain(blocks).collect()
    }

    fn units_mut(&mut self) -> Vec<&mut ConvNormAct> {
        let blocks = self
            .blocks
            .iter_mut()
            .flatten()
            .flat_map(|b| [&mut b.conv_dw, &mut b.conv_pw]);
        std::iter::once(&mut self.stem).chain(blocks).collect()
    }

    fn head_rows(&self) -> Vec<LayerRow> {
        vec![LayerRow::linear("classifier", &self.fc_weight)]
    }
}
