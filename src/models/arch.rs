//! The architecture registry: everything about an architecture in one [`ArchInfo`] entry (names
//! and aliases, builder, reference parameter count, the evaluation transform, and its published
//! weights with URL, checksum, transform and categories), in the style of torchvision's
//! `Weights` enums (`torchvision/models/_api.py`, `MobileNet_V2_Weights`) and timm's
//! `pretrained_cfg`. Nothing else spells an architecture as a string.

use super::network::NetworkSpec;
use super::{mobilenet_v1, mobilenet_v2, mobilenet_v3, ModelConfig};
use crate::preprocess::Transform;
use crate::Result;
use serde::Serialize;
use std::path::Path;

/// The architectures, named as torchvision names its builders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Arch {
    /// MobileNet V1, timm's `mobilenetv1_100` (width 1.0) / `mobilenetv1_125` (width 1.25).
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v1"))]
    #[serde(rename = "mobilenet_v1")]
    MobilenetV1,
    /// MobileNet V2, torchvision's `mobilenet_v2`.
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v2"))]
    #[serde(rename = "mobilenet_v2")]
    MobilenetV2,
    /// MobileNet V3 Large, torchvision's `mobilenet_v3_large`.
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v3_large"))]
    #[serde(rename = "mobilenet_v3_large")]
    MobilenetV3Large,
    /// MobileNet V3 Small, torchvision's `mobilenet_v3_small`.
    #[cfg_attr(feature = "cli", value(name = "mobilenet_v3_small"))]
    #[serde(rename = "mobilenet_v3_small")]
    MobilenetV3Small,
}

/// One registry entry: what the rest of the crate knows about an architecture.
#[derive(Debug)]
pub struct ArchInfo {
    pub arch: Arch,
    /// The builder's name (`--arch`, JSON, messages).
    pub name: &'static str,
    /// Other names it is known by (timm's model names, no-underscore spellings).
    pub aliases: &'static [&'static str],
    /// Where the reference implementation lives.
    pub reference: &'static str,
    /// The network a configuration describes, as data ([`NetworkSpec`]).
    pub describe: fn(&ModelConfig) -> Result<NetworkSpec>,
    /// The dropout before the classifier in the reference implementation.
    pub dropout: f64,
    /// PyTorch's `sum(p.numel() for p in model.parameters())` at width 1.0 with 1000 classes
    /// and BatchNorm.
    pub parameters: i64,
    /// The evaluation transform when no published weights exist at the requested width.
    pub transform: Transform,
    /// Its published ImageNet weights.
    pub weights: &'static [PublishedWeights],
}

/// Published weights: torchvision's `Weights` entry or timm's pretrained tag.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PublishedWeights {
    /// The file name `weights/export.py pretrained` saves them as.
    pub file: &'static str,
    /// The part of a file name that identifies them (torchvision's SHA-256 prefix, timm's
    /// model name).
    pub fragment: &'static str,
    /// Where they are published (a URL, or timm's Hugging Face Hub repository).
    pub url: &'static str,
    /// The leading hex digits of the file's SHA-256 that torchvision checks
    /// (`check_hash=True`); `None` where the publisher names none (timm).
    pub sha256_prefix: Option<&'static str>,
    /// The weights' name upstream.
    pub name: &'static str,
    pub width_mult: f64,
    /// The default weights of their architecture and width.
    pub default: bool,
    /// `weights.transforms()` / timm's eval transform.
    pub transform: Transform,
    /// The classes they predict.
    pub categories: Categories,
}

/// The label sets published weights predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Categories {
    /// ImageNet-1k, torchvision's `_IMAGENET_CATEGORIES` ([`crate::imagenet`]).
    #[serde(rename = "imagenet-1k")]
    ImageNet1k,
}

impl Categories {
    /// The labels, in class-index order.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Categories::ImageNet1k => crate::imagenet::labels(),
        }
    }
}

impl PublishedWeights {
    /// The published weights a file name identifies, if any.
    pub fn for_file(path: &Path) -> Option<&'static PublishedWeights> {
        let name = path.file_name()?.to_string_lossy();
        REGISTRY
            .iter()
            .flat_map(|a| a.weights)
            .find(|w| name.contains(w.fragment))
    }
}

/// A torchvision checkpoint: `https://download.pytorch.org/models/{file}`, whose name ends with
/// the first 8 hex digits of its SHA-256.
const fn torchvision(
    file: &'static str,
    url: &'static str,
    sha256_prefix: &'static str,
    name: &'static str,
    default: bool,
    resize: i64,
) -> PublishedWeights {
    PublishedWeights {
        file,
        fragment: sha256_prefix,
        url,
        sha256_prefix: Some(sha256_prefix),
        name,
        width_mult: 1.0,
        default,
        transform: Transform::torchvision(resize),
        categories: Categories::ImageNet1k,
    }
}

/// A timm checkpoint (`model.safetensors` of the Hub repository `url`); `resize` is
/// `floor(224 / crop_pct)`.
const fn timm(
    file: &'static str,
    model: &'static str,
    url: &'static str,
    name: &'static str,
    width_mult: f64,
    resize: i64,
) -> PublishedWeights {
    PublishedWeights {
        file,
        fragment: model,
        url,
        sha256_prefix: None,
        name,
        width_mult,
        default: true,
        transform: Transform::timm_inception(resize),
        categories: Categories::ImageNet1k,
    }
}

/// The registry, one entry per [`Arch`] in declaration order.
pub static REGISTRY: [ArchInfo; 4] = [
    ArchInfo {
        arch: Arch::MobilenetV1,
        name: "mobilenet_v1",
        aliases: &["mobilenetv1", "mobilenetv1_100", "mobilenetv1_125"],
        reference: "timm/models/efficientnet.py (_gen_mobilenet_v1)",
        describe: mobilenet_v1::describe,
        dropout: 0.0,
        parameters: 4_231_976,
        transform: Transform::timm_inception(256),
        weights: &[
            timm(
                "mobilenetv1_100.ra4_e3600_r224_in1k.safetensors",
                "mobilenetv1_100",
                "timm/mobilenetv1_100.ra4_e3600_r224_in1k",
                "timm mobilenetv1_100.ra4_e3600_r224_in1k",
                1.0,
                256,
            ),
            timm(
                "mobilenetv1_125.ra4_e3600_r224_in1k.safetensors",
                "mobilenetv1_125",
                "timm/mobilenetv1_125.ra4_e3600_r224_in1k",
                "timm mobilenetv1_125.ra4_e3600_r224_in1k",
                1.25,
                248,
            ),
        ],
    },
    ArchInfo {
        arch: Arch::MobilenetV2,
        name: "mobilenet_v2",
        aliases: &["mobilenetv2"],
        reference: "torchvision/models/mobilenetv2.py",
        describe: mobilenet_v2::describe,
        dropout: 0.2,
        parameters: 3_504_872,
        transform: Transform::torchvision(232),
        weights: &[
            torchvision(
                "mobilenet_v2-7ebf99e0.pth",
                "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth",
                "7ebf99e0",
                "torchvision MobileNet_V2_Weights.IMAGENET1K_V2",
                true,
                232,
            ),
            torchvision(
                "mobilenet_v2-b0353104.pth",
                "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
                "b0353104",
                "torchvision MobileNet_V2_Weights.IMAGENET1K_V1",
                false,
                256,
            ),
        ],
    },
    ArchInfo {
        arch: Arch::MobilenetV3Large,
        name: "mobilenet_v3_large",
        aliases: &[],
        reference: "torchvision/models/mobilenetv3.py",
        describe: mobilenet_v3::describe_large,
        dropout: 0.2,
        parameters: 5_483_032,
        transform: Transform::torchvision(232),
        weights: &[
            torchvision(
                "mobilenet_v3_large-5c1a4163.pth",
                "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
                "5c1a4163",
                "torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V2",
                true,
                232,
            ),
            torchvision(
                "mobilenet_v3_large-8738ca79.pth",
                "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
                "8738ca79",
                "torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V1",
                false,
                256,
            ),
        ],
    },
    ArchInfo {
        arch: Arch::MobilenetV3Small,
        name: "mobilenet_v3_small",
        aliases: &[],
        reference: "torchvision/models/mobilenetv3.py",
        describe: mobilenet_v3::describe_small,
        dropout: 0.2,
        parameters: 2_542_856,
        transform: Transform::torchvision(256),
        weights: &[torchvision(
            "mobilenet_v3_small-047dcff4.pth",
            "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
            "047dcff4",
            "torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1",
            true,
            256,
        )],
    },
];

impl Arch {
    /// Every architecture, in registry order.
    pub fn all() -> impl Iterator<Item = Arch> {
        REGISTRY.iter().map(|a| a.arch)
    }

    /// The registry entry.
    pub fn info(self) -> &'static ArchInfo {
        // The registry lists the variants in declaration order (checked by a test).
        &REGISTRY[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The architecture a name or alias denotes.
    pub fn from_name(name: &str) -> Option<Arch> {
        REGISTRY
            .iter()
            .find(|a| a.name == name || a.aliases.contains(&name))
            .map(|a| a.arch)
    }

    /// The network `config` (of this architecture) describes.
    pub fn describe(self, config: &ModelConfig) -> Result<NetworkSpec> {
        config.validate()?;
        (self.info().describe)(config)
    }

    /// The dropout before the classifier in the reference implementation.
    pub fn default_dropout(self) -> f64 {
        self.info().dropout
    }

    /// The default published weights at `width_mult`, if any.
    pub fn default_weights(self, width_mult: f64) -> Option<&'static PublishedWeights> {
        self.info()
            .weights
            .iter()
            .find(|w| w.default && (w.width_mult - width_mult).abs() < 1e-9)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_in_declaration_order_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for (i, info) in REGISTRY.iter().enumerate() {
            assert_eq!(info.arch as usize, i, "{}", info.name);
            assert_eq!(Arch::from_name(info.name), Some(info.arch));
            for n in std::iter::once(&info.name).chain(info.aliases) {
                assert!(names.insert(*n), "{n} is listed twice");
            }
            for w in info.weights {
                assert_eq!(PublishedWeights::for_file(Path::new(w.file)), Some(w));
            }
        }
    }

    #[test]
    fn published_parameter_counts_match_the_built_models() {
        for arch in Arch::all() {
            let model = super::super::Model::new(ModelConfig::new(arch), tch::Device::Cpu).unwrap();
            assert_eq!(model.parameter_count(), arch.info().parameters, "{arch}");
        }
    }
}
