//! Which architecture a state dict belongs to, from its key/shape signature alone.

use super::StateDict;

/// An architecture a state dict matches.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ArchGuess {
    /// `mobilenet_v2`, `mobilenet_v3_large`, `mobilenet_v3_small` (torchvision) or
    /// `mobilenetv1_100`, `mobilenetv1_125`, `mobilenetv1_100h` (timm).
    pub arch: String,
    pub width_mult: f64,
    pub num_classes: i64,
}

/// torchvision's `_make_divisible` (timm's `make_divisible` with `round_limit=0.9`).
fn make_divisible(v: f64, divisor: i64) -> i64 {
    let d = divisor as f64;
    let mut new_v = divisor.max(((v + d / 2.0) as i64) / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// Widths tried first (published ones), then a fine grid.
fn candidate_widths() -> impl Iterator<Item = f64> {
    const PUBLISHED: [f64; 11] = [1.0, 0.5, 0.75, 1.4, 0.35, 1.25, 1.3, 0.25, 1.5, 2.0, 0.1];
    PUBLISHED
        .into_iter()
        .chain((5..=400).map(|i| i as f64 / 100.0))
}

fn size(sd: &StateDict, key: &str) -> Option<Vec<i64>> {
    sd.get(key).map(|t| t.size())
}

fn out_channels(sd: &StateDict, key: &str) -> Option<i64> {
    size(sd, key).filter(|s| s.len() == 4).map(|s| s[0])
}

/// The architecture `sd` matches, if any (see [`ArchGuess`]).
pub fn detect_architecture(sd: &StateDict) -> Option<ArchGuess> {
    mobilenet_v2(sd)
        .or_else(|| mobilenet_v3(sd))
        .or_else(|| timm_mobilenet_v1(sd))
}

fn guess(arch: &str, width_mult: f64, num_classes: i64) -> Option<ArchGuess> {
    Some(ArchGuess {
        arch: arch.to_string(),
        width_mult,
        num_classes,
    })
}

/// torchvision `mobilenet_v2`: `features.0` stem, `features.1..=17` inverted residuals,
/// `features.18` last conv, `classifier.1` linear.
fn mobilenet_v2(sd: &StateDict) -> Option<ArchGuess> {
    let num_classes = size(sd, "classifier.1.weight").filter(|s| s.len() == 2)?[0];
    let last = out_channels(sd, "features.18.0.weight")?;
    if sd.get("features.19.0.weight").is_some() {
        return None;
    }
    let mut got = vec![out_channels(sd, "features.0.0.weight")?];
    for i in 1..=17 {
        let c = out_channels(sd, &format!("features.{i}.conv.2.weight"))
            .or_else(|| out_channels(sd, &format!("features.{i}.conv.1.weight")))?;
        got.push(c);
    }
    got.push(last);
    const SETTING: [(i64, usize); 7] = [
        (16, 1),
        (24, 2),
        (32, 3),
        (64, 4),
        (96, 3),
        (160, 3),
        (320, 1),
    ];
    let width = candidate_widths().find(|&w| {
        let mut want = vec![make_divisible(32.0 * w, 8)];
        for (c, n) in SETTING {
            want.extend(std::iter::repeat_n(make_divisible(c as f64 * w, 8), n));
        }
        want.push(make_divisible(1280.0 * w.max(1.0), 8));
        want == got
    })?;
    guess("mobilenet_v2", width, num_classes)
}

/// torchvision `mobilenet_v3_large` (features 0..=16, classifier [md(1280w), 6*md(160w)]) and
/// `mobilenet_v3_small` (features 0..=12, classifier [md(1024w), 6*md(96w)]).
fn mobilenet_v3(sd: &StateDict) -> Option<ArchGuess> {
    let head = size(sd, "classifier.0.weight").filter(|s| s.len() == 2)?;
    let num_classes = size(sd, "classifier.3.weight").filter(|s| s.len() == 2)?[0];
    let last_feature = (0..32)
        .rev()
        .find(|i| out_channels(sd, &format!("features.{i}.0.weight")).is_some())?;
    let (arch, hidden, last_block) = match last_feature {
        16 => ("mobilenet_v3_large", 1280.0, 160.0),
        12 => ("mobilenet_v3_small", 1024.0, 96.0),
        _ => return None,
    };
    let width = candidate_widths().find(|&w| {
        head == [
            make_divisible(hidden * w, 8),
            6 * make_divisible(last_block * w, 8),
        ]
    })?;
    guess(arch, width, num_classes)
}

/// timm `mobilenetv1_*`: `conv_stem`, `blocks.*.*.conv_dw` + `conv_pw` (no `conv_pwl`), and
/// `conv_head` for the `h` variants.
fn timm_mobilenet_v1(sd: &StateDict) -> Option<ArchGuess> {
    let stem = out_channels(sd, "conv_stem.weight")?;
    out_channels(sd, "blocks.0.0.conv_dw.weight")?;
    if sd
        .tensors
        .iter()
        .any(|(k, _)| k.contains("conv_pwl") || k.contains(".se."))
    {
        return None;
    }
    let num_classes = size(sd, "classifier.weight").filter(|s| s.len() == 2)?[0];
    let last_pw = sd
        .tensors
        .iter()
        .rev()
        .find(|(k, t)| k.starts_with("blocks.") && k.ends_with(".conv_pw.weight") && t.dim() == 4)?
        .1
        .size()[0];
    let width = candidate_widths().find(|&w| {
        make_divisible(32.0 * w, 8) == stem && make_divisible(1024.0 * w, 8) == last_pw
    })?;
    let head = if sd.get("conv_head.weight").is_some() {
        "h"
    } else {
        ""
    };
    guess(
        &format!("mobilenetv1_{:03}{head}", (width * 100.0).round() as i64),
        width,
        num_classes,
    )
}
