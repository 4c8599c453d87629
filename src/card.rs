//! The model card a training run writes beside its weights (`model.json`, with `classes.json`):
//! the architecture, width, norm, class count and evaluation transform, so that
//! `classify --weights OUT/model.pth` rebuilds the right model and preprocessing with no flags.
//! Both are read back with caps and checks, each error naming its file.

use crate::file::{read_regular, Refusal};
use crate::models::{Arch, ModelConfig};
use crate::nn::NormKind;
use crate::preprocess::Transform;
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `model.json`'s file name.
pub const MODEL_CARD: &str = "model.json";
/// `classes.json`'s file name: the class names, in index order.
pub const CLASSES: &str = "classes.json";
/// The most bytes `model.json` may have (a card is a few hundred).
pub const MAX_CARD_BYTES: u64 = 1 << 20;
/// The most bytes `classes.json` may have.
pub const MAX_CLASSES_BYTES: u64 = 64 << 20;
/// The most bytes (UTF-8) one class name may have.
pub const MAX_CLASS_NAME_BYTES: usize = 1024;

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

    /// Reads `model.json` at `path` (at most [`MAX_CARD_BYTES`]) and checks it: a known
    /// architecture, a usable width, class count, norm and dropout ([`ModelCard::config`]) and
    /// transform ([`Transform::validate`]). Errors name the file.
    pub fn read(path: &Path) -> Result<ModelCard> {
        let card: ModelCard = read_json(path, MAX_CARD_BYTES, "a model card")?;
        card.config()
            .and_then(|_| card.transform.validate())
            .map_err(|e| Error::file(path, e.to_string()))?;
        Ok(card)
    }

    /// The card in the folder of the weight file `weights`, with its class names when
    /// `classes.json` is there too ([`read_classes`]); `None` when there is no `model.json`.
    /// A card or class list that is there but unreadable or wrong is an error.
    pub fn beside(weights: &Path) -> Result<Option<(ModelCard, Option<Vec<String>>)>> {
        let card_path = beside(weights, MODEL_CARD);
        if !exists(&card_path)? {
            return Ok(None);
        }
        let card = ModelCard::read(&card_path)?;
        let classes_path = beside(weights, CLASSES);
        let classes = match exists(&classes_path)? {
            true => Some(read_classes(&classes_path, card.num_classes)?),
            false => None,
        };
        Ok(Some((card, classes)))
    }
}

/// Reads `classes.json` at `path` (at most [`MAX_CLASSES_BYTES`]): a JSON array of exactly
/// `expected` strings of at most [`MAX_CLASS_NAME_BYTES`] each, the class names in index order.
/// Errors name the file.
pub fn read_classes(path: &Path, expected: i64) -> Result<Vec<String>> {
    let names: Vec<String> = read_json(path, MAX_CLASSES_BYTES, "an array of class names")?;
    if names.len() as i64 != expected {
        let msg = format!(
            "{} class names, but the model has {expected} classes",
            names.len()
        );
        return Err(Error::file(path, msg));
    }
    if let Some(i) = names.iter().position(|n| n.len() > MAX_CLASS_NAME_BYTES) {
        let msg = format!(
            "class {i}'s name is {} bytes, more than {MAX_CLASS_NAME_BYTES}",
            names[i].len()
        );
        return Err(Error::file(path, msg));
    }
    Ok(names)
}

/// The file `name` (`model.json`, `classes.json`) in the folder of the file `weights`.
pub fn beside(weights: &Path, name: &str) -> PathBuf {
    match weights.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => Path::new(".").join(name),
    }
}

/// Whether something is at `path` (a dangling link counts: reading it then says why not).
fn exists(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The JSON file at `path`, at most `max_bytes` of it ([`read_regular`]), as a `T` (`what` it
/// should hold, for the error).
fn read_json<T: DeserializeOwned>(path: &Path, max_bytes: u64, what: &str) -> Result<T> {
    let bytes = read_regular(path, max_bytes).map_err(|refusal| {
        let msg = match refusal {
            Refusal::Io(e) => return Error::io(path, e),
            Refusal::NotRegular(kind) => format!("not a regular file ({kind})"),
            Refusal::TooLarge { .. } => format!("larger than the {max_bytes} bytes allowed"),
            Refusal::NoMemory { bytes } => format!("cannot hold {bytes} bytes"),
        };
        Error::file(path, msg)
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => format!("not {what}: {e}"),
            _ => format!("not valid JSON: {e}"),
        };
        Error::file(path, msg)
    })
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
    replace_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::file(tmp, format!("cannot write: {e}")))
    })
}

/// Writes `path` through `path.tmp`: `write` creates the temporary file, then a rename puts it
/// in place, so that a reader never sees half a file.
pub fn replace_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder for one test.
    fn temp_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mobilenet-card-{test}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A V3 Small card with GroupNorm and timm's bicubic transform at crop 64, by its fields.
    fn card() -> ModelCard {
        ModelCard {
            arch: "mobilenet_v3_small".into(),
            width_mult: 0.75,
            norm: "group:8".parse().unwrap(),
            num_classes: 3,
            dropout: 0.1,
            transform: Transform {
                crop: 64,
                ..Transform::timm_inception(73)
            },
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("name {i}")).collect()
    }

    /// `model.json` with `edit` applied to the card's JSON object.
    fn write_edited(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let mut value = serde_json::to_value(card()).unwrap();
        edit(&mut value);
        let path = dir.join(MODEL_CARD);
        write_json(&path, &value).unwrap();
        path
    }

    #[test]
    fn written_cards_are_found_beside_the_weights() {
        let dir = temp_dir("beside");
        let weights = dir.join("model.pth");
        assert_eq!(ModelCard::beside(&weights).unwrap(), None);
        assert_eq!(beside(&weights, CLASSES), dir.join(CLASSES));
        let bare = beside(Path::new("model.pth"), MODEL_CARD);
        assert_eq!(bare, Path::new(".").join(MODEL_CARD));
        card().write(&dir, &names(3)).unwrap();
        let (read, classes) = ModelCard::beside(&weights).unwrap().unwrap();
        assert_eq!(read, card());
        assert_eq!(classes, Some(names(3)));
        let config = read.config().unwrap();
        assert_eq!(
            (config.arch, config.width_mult),
            (Arch::MobilenetV3Small, 0.75)
        );
        assert_eq!((config.num_classes, config.dropout), (3, 0.1));
        assert_eq!(config.norm.to_string(), "group:8");
        // Without classes.json: the card alone.
        std::fs::remove_file(dir.join(CLASSES)).unwrap();
        assert_eq!(ModelCard::beside(&weights).unwrap(), Some((card(), None)));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_cards_are_errors_naming_the_file() {
        let dir = temp_dir("bad");
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit); 6] = [
            ("unknown architecture \"resnet50\"", |v| {
                v["arch"] = "resnet50".into()
            }),
            ("invalid width_mult: 0 is not in (0, 10]", |v| {
                v["width_mult"] = 0.0.into()
            }),
            ("invalid num_classes: 0 is not >= 1", |v| {
                v["num_classes"] = 0.into()
            }),
            ("invalid dropout: 1 is not in [0, 1)", |v| {
                v["dropout"] = 1.0.into()
            }),
            ("invalid crop: 8 is not in 32..=8192", |v| {
                v["transform"]["crop"] = 8.into()
            }),
            ("not a model card: missing field `norm`", |v| {
                v.as_object_mut().unwrap().remove("norm");
            }),
        ];
        for (want, edit) in cases {
            let path = write_edited(&dir, edit);
            let err = ModelCard::read(&path).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
            assert!(err.contains(want), "{err} (want {want})");
            // beside() says the same.
            let beside = ModelCard::beside(&dir.join("model.pth")).unwrap_err();
            assert_eq!(beside.to_string(), err);
        }
        let path = dir.join(MODEL_CARD);
        std::fs::write(&path, "arch: mobilenet_v2").unwrap();
        let err = ModelCard::read(&path).unwrap_err().to_string();
        assert!(err.contains("model.json: not valid JSON: "), "{err}");
        std::fs::write(&path, vec![b' '; MAX_CARD_BYTES as usize + 1]).unwrap();
        let err = ModelCard::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("larger than the 1048576 bytes allowed"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn class_lists_must_fit_the_card() {
        let dir = temp_dir("classes");
        let path = dir.join(CLASSES);
        write_json(&path, &names(2)).unwrap();
        assert_eq!(read_classes(&path, 2).unwrap(), names(2));
        let err = read_classes(&path, 3).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: 2 class names, but the model has 3 classes",
                path.display()
            )
        );
        // beside() checks the list against the card's class count.
        card().write(&dir, &names(3)).unwrap();
        write_json(&path, &names(2)).unwrap();
        let beside = ModelCard::beside(&dir.join("model.pth")).unwrap_err();
        assert_eq!(beside.to_string(), err);

        let long = vec!["a".to_string(), "b".repeat(MAX_CLASS_NAME_BYTES + 1)];
        write_json(&path, &long).unwrap();
        let err = read_classes(&path, 2).unwrap_err().to_string();
        assert!(
            err.contains("class 1's name is 1025 bytes, more than 1024"),
            "{err}"
        );
        std::fs::write(&path, "[1, 2]").unwrap();
        let err = read_classes(&path, 2).unwrap_err().to_string();
        assert!(
            err.contains("classes.json: not an array of class names: invalid type"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
