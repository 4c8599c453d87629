//! Which architecture a state dict belongs to, from its key/shape signature alone: the channels
//! each layer holds are compared with what the models' own tables give at each width.

use super::StateDict;
use crate::models::{make_divisible, mobilenet_v1, mobilenet_v2, mobilenet_v3, Arch};

/// An architecture a state dict matches.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchGuess {
    pub arch: Arch,
    pub width_mult: f64,
    pub num_classes: i64,
    /// timm's `h` variants of MobileNet V1 (`mobilenetv1_100h`): a 1x1 `conv_head` before the
    /// classifier, which [`Arch::MobilenetV1`] does not build.
    pub conv_head: bool,
}

impl ArchGuess {
    /// The reference implementation's name for it: torchvision's (`mobilenet_v2`,
    /// `mobilenet_v3_large`, `mobilenet_v3_small`) or timm's (`mobilenetv1_100`,
    /// `mobilenetv1_125`, `mobilenetv1_100h`).
    pub fn reference_name(&self) -> String {
        match self.arch {
            Arch::MobilenetV1 => format!(
                "mobilenetv1_{:03}{}",
                (self.width_mult * 100.0).round() as i64,
                if self.conv_head { "h" } else { "" }
            ),
            arch => arch.name().to_string(),
        }
    }
}

impl serde::Serialize for ArchGuess {
    /// `{"arch": reference name, "width_mult", "num_classes"}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ArchGuess", 3)?;
        st.serialize_field("arch", &self.reference_name())?;
        st.serialize_field("width_mult", &self.width_mult)?;
        st.serialize_field("num_classes", &self.num_classes)?;
        st.end()
    }
}

/// Stem channels at width 1 (V1 and V2: the first conv's output).
const STEM_CHANNELS: f64 = 32.0;
/// V2's last conv at width 1 (torchvision's `last_channel`; never narrowed below it).
const V2_LAST_CHANNEL: f64 = 1280.0;
/// Channels are rounded to multiples of this (torchvision's `round_nearest`, timm's divisor).
const DIVISOR: i64 = 8;

fn channels(c: f64, width: f64) -> i64 {
    make_divisible(c * width, DIVISOR)
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

/// Rows of a linear layer's weight `[classes, features]`.
fn linear_rows(sd: &StateDict, key: &str) -> Option<i64> {
    size(sd, key).filter(|s| s.len() == 2).map(|s| s[0])
}

/// The architecture `sd` matches, if any (see [`ArchGuess`]).
pub fn detect_architecture(sd: &StateDict) -> Option<ArchGuess> {
    detect_v2(sd)
        .or_else(|| detect_v3(sd))
        .or_else(|| detect_v1(sd))
}

fn guess(arch: Arch, width_mult: f64, num_classes: i64) -> Option<ArchGuess> {
    Some(ArchGuess {
        arch,
        width_mult,
        num_classes,
        conv_head: false,
    })
}

/// torchvision `mobilenet_v2`: `features.0` stem, one inverted residual per repeat of
/// [`mobilenet_v2::INVERTED_RESIDUAL_SETTING`], the last conv, `classifier.1` linear.
fn detect_v2(sd: &StateDict) -> Option<ArchGuess> {
    let setting = mobilenet_v2::INVERTED_RESIDUAL_SETTING;
    let blocks = setting
        .iter()
        .map(|&[_, _, n, _]| n as usize)
        .sum::<usize>();
    let num_classes = linear_rows(sd, "classifier.1.weight")?;
    let last = out_channels(sd, &format!("features.{}.0.weight", blocks + 1))?;
    if sd
        .get(&format!("features.{}.0.weight", blocks + 2))
        .is_some()
    {
        return None;
    }
    let mut got = vec![out_channels(sd, "features.0.0.weight")?];
    for i in 1..=blocks {
        let c = out_channels(sd, &format!("features.{i}.conv.2.weight"))
            .or_else(|| out_channels(sd, &format!("features.{i}.conv.1.weight")))?;
        got.push(c);
    }
    got.push(last);
    let width = candidate_widths().find(|&w| {
        let mut want = vec![channels(STEM_CHANNELS, w)];
        for [_, c, n, _] in setting {
            want.extend(std::iter::repeat_n(channels(c as f64, w), n as usize));
        }
        want.push(channels(V2_LAST_CHANNEL, w.max(1.0)));
        want == got
    })?;
    guess(Arch::MobilenetV2, width, num_classes)
}

/// torchvision `mobilenet_v3_large` / `_small`: the stem, one feature per row of
/// [`mobilenet_v3::LARGE`] / [`mobilenet_v3::SMALL`], the last conv; classifier
/// `[md(last_channel * w), 6 * md(last block's channels * w)]`.
fn detect_v3(sd: &StateDict) -> Option<ArchGuess> {
    let head = size(sd, "classifier.0.weight").filter(|s| s.len() == 2)?;
    let num_classes = linear_rows(sd, "classifier.3.weight")?;
    let last_feature = (0..32)
        .rev()
        .find(|i| out_channels(sd, &format!("features.{i}.0.weight")).is_some())?;
    let (arch, table, last_channel) = [
        (
            Arch::MobilenetV3Large,
            &mobilenet_v3::LARGE[..],
            mobilenet_v3::LARGE_LAST_CHANNEL,
        ),
        (
            Arch::MobilenetV3Small,
            &mobilenet_v3::SMALL[..],
            mobilenet_v3::SMALL_LAST_CHANNEL,
        ),
    ]
    .into_iter()
    .find(|(_, table, _)| table.len() + 1 == last_feature)?;
    let last_block = table.last()?.out_channels as f64;
    let width = candidate_widths().find(|&w| {
        head == [
            channels(last_channel as f64, w),
            6 * channels(last_block, w),
        ]
    })?;
    guess(arch, width, num_classes)
}

/// timm `mobilenetv1_*`: `conv_stem`, `blocks.{stage}.{i}.conv_dw` + `conv_pw` per row of
/// [`mobilenet_v1::STAGES`] (no `conv_pwl`, no squeeze-excitation), and `conv_head` for the `h`
/// variants.
fn detect_v1(sd: &StateDict) -> Option<ArchGuess> {
    let stem = out_channels(sd, "conv_stem.weight")?;
    out_channels(sd, "blocks.0.0.conv_dw.weight")?;
    if sd
        .tensors
        .iter()
        .any(|(k, _)| k.contains("conv_pwl") || k.contains(".se."))
    {
        return None;
    }
    let num_classes = linear_rows(sd, "classifier.weight")?;
    let mut got = vec![stem];
    for (stage, &(repeats, _, _)) in mobilenet_v1::STAGES.iter().enumerate() {
        for i in 0..repeats {
            got.push(out_channels(
                sd,
                &format!("blocks.{stage}.{i}.conv_pw.weight"),
            )?);
        }
    }
    let width = candidate_widths().find(|&w| {
        let mut want = vec![channels(STEM_CHANNELS, w)];
        for (repeats, _, c) in mobilenet_v1::STAGES {
            want.extend(std::iter::repeat_n(channels(c as f64, w), repeats as usize));
        }
        want == got
    })?;
    Some(ArchGuess {
        conv_head: sd.get("conv_head.weight").is_some(),
        ..guess(Arch::MobilenetV1, width, num_classes)?
    })
}
