//! Which architecture a state dict belongs to, from its key/shape signature alone: its
//! convolution and linear weights are compared with what each registered architecture's own
//! description gives at each width.

use super::StateDict;
use crate::models::{Arch, ModelConfig};
use crate::nn::NormKind;
use std::collections::BTreeMap;

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

/// timm's head conv of its `h` variants (`mobilenetv1_100h`), which we do not build.
const TIMM_CONV_HEAD: &str = "conv_head.weight";

/// Widths tried first (published ones), then a fine grid.
fn candidate_widths() -> impl Iterator<Item = f64> {
    const PUBLISHED: [f64; 11] = [1.0, 0.5, 0.75, 1.4, 0.35, 1.25, 1.3, 0.25, 1.5, 2.0, 0.1];
    PUBLISHED
        .into_iter()
        .chain((5..=400).map(|i| i as f64 / 100.0))
}

/// The convolution and linear weights of `shapes` (rank 4 and 2): what fixes an
/// architecture, whatever the norm after each convolution.
fn weight_shapes<'a>(
    shapes: impl Iterator<Item = (&'a str, Vec<i64>)>,
) -> BTreeMap<&'a str, Vec<i64>> {
    shapes
        .filter(|(_, shape)| shape.len() == 4 || shape.len() == 2)
        .collect()
}

/// The architecture `sd` matches, if any (see [`ArchGuess`]): every registered architecture
/// is described at each candidate width with the file's class count
/// ([`crate::models::NetworkSpec::variables`]), and its convolution and linear weights must be
/// exactly the file's, key for key and shape for shape. Nothing is built.
pub fn detect_architecture(sd: &StateDict) -> Option<ArchGuess> {
    let mut have = weight_shapes(sd.tensors.iter().map(|(k, t)| (k.as_str(), t.size())));
    let conv_head = have.remove(TIMM_CONV_HEAD).is_some();
    Arch::all().find_map(|arch| {
        let base = ModelConfig::new(arch);
        let head = arch.describe(&base).ok()?.head.last()?.path;
        let num_classes = have.get(format!("{head}.weight").as_str())?[0];
        let width_mult = candidate_widths().find(|&width_mult| {
            let config = ModelConfig {
                width_mult,
                num_classes,
                ..base.clone()
            };
            arch.describe(&config).is_ok_and(|spec| {
                let vars = spec.variables(&NormKind::Batch);
                weight_shapes(vars.iter().map(|(k, s)| (k.as_str(), s.clone()))) == have
            })
        })?;
        Some(ArchGuess {
            arch,
            width_mult,
            num_classes,
            conv_head,
        })
    })
}
