//! The model card a training run writes beside its weights (`model.json`, with `classes.json`):
//! the architecture, width, norm, class count and evaluation transform, so that
//! `classify --weights OUT/model.pth` rebuilds the right model and preprocessing with no flags.

use crate::models::{Arch, ModelConfig};
use crate::nn::NormKind;
use crate::preprocess::Transform;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `model.json`'s file name.
pub const MODEL_CARD: &str = "model.json";
/// `classes.json`'s file name: the class names, in index order.
pub const CLASSES: &str = "classes.json";

/// What `model.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The architecture's registry name (`mobilenet_v2`, ...).
    pub arch: String,
    pub width_mult: f64,
    /// `batch`, `group:G`, `layer` or `instance`.
    pub norm: NormKind,
    pub num_classes: i64,
    pub dropout: f64,
    /// The evaluation transform the model was validated with.
    pub transform: Transform,
}

impl ModelCard {
    /// The card of `config`, evaluated with `transform`.
    pub fn new(config: &ModelConfig, transform: Transform) -> ModelCard {
        ModelCard {
            arch: config.arch.name().to_string(),
            width_mult: config.width_mult,
            norm: config.norm,
            num_classes: config.num_classes,
            dropout: config.dropout,
            transform,
        }
    }

    /// The model configuration the card describes.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = Arch::from_name(&self.arch).ok_or_else(|| {
            Error::config("arch", format!("unknown architecture {:?}", self.arch))
        })?;
        let config = ModelConfig {
            width_mult: self.width_mult,
            num_classes: self.num_classes,
            norm: self.norm,
            dropout: self.dropout,
            ..ModelConfig::new(arch)
        };
        config.validate()?;
        Ok(config)
    }

    /// Writes `model.json` and `classes.json` (which must hold `num_classes` names) into `dir`.
    pub fn write(&self, dir: &Path, classes: &[String]) -> Result<()> {
        if classes.len() as i64 != self.num_classes {
            return Err(Error::config(
                "classes",
                format!("{} names for {} classes", classes.len(), self.num_classes),
            ));
        }
        write_json(&dir.join(MODEL_CARD), self)?;
        write_json(&dir.join(CLASSES), &classes)
    }
}

/// Writes `value` as pretty JSON to `path` (through a temporary file, then a rename).
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::file(path, format!("cannot serialize: {e}")))?;
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` through `path.tmp` and a rename, so that a reader never sees half a
/// file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::file(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, format!("cannot write: {e}")))
}
