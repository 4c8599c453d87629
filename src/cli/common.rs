//! Arguments shared by several subcommands.

use mobilenet::models::{Arch, ModelConfig};
use mobilenet::nn::NormKind;

/// `--arch`, `--width-mult`, `--num-classes`, `--norm`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Architecture.
    #[arg(long, value_enum, default_value = "mobilenet_v2")]
    pub arch: Arch,
    /// Width multiplier: scales every layer's channels.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub width_mult: f64,
    /// Number of output classes.
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
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
