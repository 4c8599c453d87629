//! Arguments shared by several subcommands, and the bounds of every count flag (each flag is
//! checked when it is parsed: a value out of range is a usage error naming the flag).

use clap::builder::TypedValueParser;
use mobilenet::models::{Arch, Model, ModelConfig};
use mobilenet::nn::NormKind;
use std::ops::RangeInclusive;

/// Most output classes (`--num-classes`; also the most `--top-k`).
pub const MAX_CLASSES: i64 = 100_000;
/// Input resolutions (`--resolution`), square: the models need 32, and the largest keeps every
/// count within `i64`.
pub const RESOLUTIONS: RangeInclusive<i64> = 32..=8192;
/// Images per forward pass (`--batch-size`, `--batch-sizes`).
pub const BATCH_SIZES: RangeInclusive<i64> = 1..=4096;
/// Intra-op threads (`--threads`).
pub const THREADS: RangeInclusive<i64> = 1..=1024;
/// Timed (`--iters`) and warm-up (`--warmup`) iterations.
pub const ITERATIONS: RangeInclusive<i64> = 0..=100_000;
/// The largest `--width-mult` (as `ModelConfig::validate`): it must be in (0, 10].
pub const MAX_WIDTH_MULT: f64 = 10.0;

/// Parses `--width-mult`: a number in (0, [`MAX_WIDTH_MULT`]].
pub fn width_mult(s: &str) -> Result<f64, String> {
    let w: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if w.is_finite() && w > 0.0 && w <= MAX_WIDTH_MULT {
        Ok(w)
    } else {
        Err(format!("{w} is not in (0, {MAX_WIDTH_MULT}]"))
    }
}

/// An error when `--arch` asks for another architecture than the weight file at `path` holds.
pub fn check_arch(
    asked: Option<Arch>,
    held: Option<Arch>,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    match (asked, held) {
        (Some(asked), Some(held)) if asked != held => anyhow::bail!(
            "{}: holds {held} weights, not {asked}; pass --arch {held} (or leave --arch out)",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// A parser of counts in `range` (which must be non-negative), as `usize`.
pub fn usize_in(range: RangeInclusive<i64>) -> impl TypedValueParser<Value = usize> {
    clap::value_parser!(u32).range(range).map(|v| v as usize)
}

/// `--arch`, `--width-mult`, `--num-classes`, `--norm`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Architecture.
    #[arg(long, value_enum, default_value = "mobilenet_v2")]
    pub arch: Arch,
    /// Width multiplier: scales every layer's channels.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = width_mult)]
    pub width_mult: f64,
    /// Number of output classes (at most 100000).
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(1..=MAX_CLASSES))]
    pub num_classes: i64,
    /// Normalization after each convolution: batch, group:G, layer, instance.
    #[arg(long, default_value = "batch")]
    pub norm: NormKind,
    /// MobileNet V3: halve the channels of the last blocks (torchvision's `reduced_tail`).
    #[arg(long)]
    pub reduced_tail: bool,
    /// MobileNet V3: dilate the last blocks instead of striding (torchvision's `dilated`).
    #[arg(long)]
    pub dilated: bool,
}

impl ModelArgs {
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            width_mult: self.width_mult,
            num_classes: self.num_classes,
            norm: self.norm,
            reduced_tail: self.reduced_tail,
            dilated: self.dilated,
            ..ModelConfig::new(self.arch)
        }
    }
}

/// Compiles `model`'s direct oneDNN engine where it applies ([`Model::compile_engine`]) and
/// says so on stderr, as `command`, when it applies and this build has the engine but it did not
/// load (a missing or unloadable library): libtorch's kernels run then, within 1e-5 of the
/// engine's logits but not its bytes. Whether the engine runs.
pub fn compile_engine(command: &str, model: &mut Model) -> mobilenet::Result<bool> {
    let compiled = model.compile_engine()?;
    if !compiled && model.engine_applies() {
        if let Some(why) = mobilenet::ffi::engine_load_error() {
            eprintln!(
                "{command}: warning: the direct oneDNN engine did not load ({why}); libtorch's \
                 kernels run instead"
            );
        }
    }
    Ok(compiled)
}
