//! Per-layer table of a model: output shape, parameters, multiply-adds, and for each
//! depthwise + pointwise pair the standard convolution it replaces (the MobileNet paper's
//! Section 3.1; the design notes' example: a 3x3 conv from 3 to 4 channels has 108 weights,
//! depthwise 27 + pointwise 12 = 39).

use super::ModelConfig;
use crate::nn::conv::{join_dotted, ConvKind, ConvSpec};
use crate::nn::{BatchNormConfig, NormKind, SqueezeExcitation, UnitSpec};
use serde::Serialize;

/// One layer of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    /// The module path, e.g. `features.1.conv.0.0`.
    pub name: String,
    /// `conv`, `depthwise`, `pointwise`, `linear`, ...
    pub kind: String,
    /// Output shape of one sample: `[C, H, W]` or `[K]`.
    pub output_shape: Vec<i64>,
    /// Trainable parameters (the layer's weight and bias, and its norm's affine parameters).
    pub parameters: i64,
    /// Multiply-accumulate operations for one sample.
    pub mult_adds: i64,
    /// On a pointwise conv that follows a depthwise one: the pair's weights against the
    /// standard convolution with the same kernel, input and output channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separable: Option<Separable>,
}

/// A depthwise + pointwise pair compared with the standard convolution it replaces.
#[derive(Debug, Clone, Serialize)]
pub struct Separable {
    pub depthwise_weights: i64,
    pub pointwise_weights: i64,
    pub standard_weights: i64,
    /// `(depthwise + pointwise) / standard`.
    pub ratio: f64,
}

impl Separable {
    /// `k`x`k` depthwise on `c_in` channels then 1x1 to `c_out`, against a `k`x`k` conv.
    pub fn new(kernel: i64, c_in: i64, c_out: i64) -> Separable {
        let depthwise_weights = kernel * kernel * c_in;
        let pointwise_weights = c_in * c_out;
        let standard_weights = kernel * kernel * c_in * c_out;
        Separable {
            depthwise_weights,
            pointwise_weights,
            standard_weights,
            ratio: (depthwise_weights + pointwise_weights) as f64 / standard_weights as f64,
        }
    }
}

impl LayerRow {
    /// A fully connected layer `in` -> `out` with a bias.
    pub fn linear(name: &str, out: i64, inp: i64) -> LayerRow {
        LayerRow {
            name: name.to_string(),
            kind: "linear".into(),
            output_shape: vec![out],
            parameters: out * inp + out,
            mult_adds: out * inp,
            separable: None,
        }
    }

    /// A convolution unit whose input is `h`x`w`, with `norm_parameters` in its norm; returns
    /// the row and the output size.
    pub fn conv(
        name: String,
        s: &ConvSpec,
        norm_parameters: i64,
        h: i64,
        w: i64,
    ) -> (Self, i64, i64) {
        let (oh, ow) = (s.out_size(h), s.out_size(w));
        let row = LayerRow {
            name,
            kind: s.kind().name().to_string(),
            output_shape: vec![s.out_channels, oh, ow],
            parameters: s.weight_count() + norm_parameters,
            mult_adds: oh * ow * s.weight_count(),
            separable: None,
        };
        (row, oh, ow)
    }
}

/// Rows for a chain of units (the main path, each with its block's dotted path) with `norm`
/// after every convolution, followed by the head.
pub fn rows_from_units(
    units: &[(&str, &UnitSpec, &BatchNormConfig)],
    norm: &NormKind,
    resolution: i64,
    head: Vec<LayerRow>,
) -> Vec<LayerRow> {
    let (mut h, mut w) = (resolution, resolution);
    let mut rows = Vec::new();
    let mut prev: Option<&ConvSpec> = None;
    for &(block, unit, bn) in units {
        let (conv, spec) = match unit {
            UnitSpec::Conv { conv, spec, .. } => (conv, spec),
            UnitSpec::SqueezeExcite {
                path,
                channels: c,
                squeeze_channels: s,
            } => {
                rows.push(LayerRow {
                    name: join_dotted(block, path),
                    kind: "squeeze-excite".into(),
                    output_shape: vec![*c, h, w],
                    parameters: SqueezeExcitation::parameter_count(*c, *s),
                    mult_adds: SqueezeExcitation::mult_adds(*c, *s, h, w),
                    separable: None,
                });
                continue;
            }
        };
        let norm_parameters = norm
            .state_shapes(spec.out_channels, *bn)
            .iter()
            .filter(|(name, _)| matches!(*name, "weight" | "bias"))
            .map(|(_, shape)| shape.iter().product::<i64>())
            .sum();
        let (mut row, oh, ow) =
            LayerRow::conv(join_dotted(block, conv), spec, norm_parameters, h, w);
        if let Some(dw) = prev.filter(|p| p.kind() == ConvKind::Depthwise) {
            if spec.kind() == ConvKind::Pointwise {
                row.separable = Some(Separable::new(dw.kernel, dw.in_channels, spec.out_channels));
            }
        }
        rows.push(row);
        (h, w) = (oh, ow);
        prev = Some(spec);
    }
    rows.extend(head);
    rows
}

/// The whole table with totals.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub config: ModelConfig,
    pub resolution: i64,
    pub layers: Vec<LayerRow>,
    pub total_parameters: i64,
    pub total_mult_adds: i64,
}

impl Summary {
    /// The table of the model `config` describes, without building it (no weights are
    /// allocated).
    pub fn for_config(config: ModelConfig, resolution: i64) -> crate::Result<Summary> {
        let rows = config
            .arch
            .describe(&config)?
            .rows(resolution, &config.norm);
        Ok(Summary::new(config, resolution, rows))
    }

    pub fn new(config: ModelConfig, resolution: i64, layers: Vec<LayerRow>) -> Summary {
        let total_parameters = layers.iter().map(|r| r.parameters).sum();
        let total_mult_adds = layers.iter().map(|r| r.mult_adds).sum();
        Summary {
            config,
            resolution,
            layers,
            total_parameters,
            total_mult_adds,
        }
    }

    /// The table as text, one row per layer, then the totals.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "{} width {} norm {} classes {} at {r}x{r}",
            c.arch,
            c.width_mult,
            c.norm,
            c.num_classes,
            r = self.resolution
        );
        let _ = writeln!(
            out,
            "{:<24} {:<14} {:>16} {:>11} {:>14}  separable vs standard",
            "layer", "kind", "output", "params", "mult-adds"
        );
        for r in &self.layers {
            let shape = r
                .output_shape
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join("x");
            let sep = r.separable.as_ref().map_or(String::new(), |s| {
                format!(
                    "{} + {} = {} vs {} ({:.3}x)",
                    s.depthwise_weights,
                    s.pointwise_weights,
                    s.depthwise_weights + s.pointwise_weights,
                    s.standard_weights,
                    s.ratio
                )
            });
            let _ = writeln!(
                out,
                "{:<24} {:<14} {:>16} {:>11} {:>14}  {sep}",
                r.name,
                r.kind,
                shape,
                group_digits(r.parameters),
                group_digits(r.mult_adds)
            );
        }
        let _ = writeln!(
            out,
            "total: {} parameters, {} mult-adds ({:.1}M)",
            group_digits(self.total_parameters),
            group_digits(self.total_mult_adds),
            self.total_mult_adds as f64 / 1e6
        );
        out
    }
}

/// `3504872` → `3,504,872`.
pub fn group_digits(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}
