//! Training data: an image folder with torchvision's `ImageFolder` semantics, a seeded stratified
//! hold-out split, the per-epoch sample order, and batches decoded and augmented by worker
//! threads with bounded memory.
//!
//! **The folder** (`torchvision/datasets/folder.py`): every sub-folder of the root is a class
//! (links to folders count), classes sorted by name, index = position. A class's samples are the
//! files under its folder, recursively with links followed (`os.walk(followlinks=True)`; a link
//! back into a folder already walked is not walked again), folders in sorted path order, files
//! sorted by name within each, kept when their name ends (any case) in one of
//! [`IMG_EXTENSIONS`]. A class folder without such a file is an error, as in torchvision.
//!
//! **Bad files** are not an error: a file that cannot be read or decoded is reported with its
//! path and reason in [`Batch::skipped`] and left out of its batch; the others go on.

use super::augment::{Rng, SamplePrep};
use crate::pipeline::ordered_map;
use crate::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// torchvision's `IMG_EXTENSIONS`.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// The most samples a folder may hold (a tree larger than this is refused, not listed forever).
pub const MAX_SAMPLES: usize = 50_000_000;

/// How deep class folders may nest.
const MAX_DEPTH: usize = 64;

/// One image file and its class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: i64,
}

/// An image folder: class names (sorted) and samples (class by class, in torchvision's order).
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

impl ImageFolder {
    /// Lists `root` as torchvision's `ImageFolder(root)` does (see the module docs).
    pub fn open(root: &Path) -> Result<ImageFolder> {
        let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
        let mut classes = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            // `entry.is_dir()` in Python follows links.
            if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                let name = entry.file_name();
                let name = name.to_str().ok_or_else(|| {
                    Error::file(
                        entry.path(),
                        "the class folder's name is not valid UTF-8 (classes.json needs it)",
                    )
                })?;
                classes.push(name.to_string());
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(Error::file(
                root,
                "has no class folders (ImageFolder needs one sub-folder per class)",
            ));
        }
        let mut samples = Vec::new();
        let mut empty = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let before = samples.len();
            let dir = root.join(class);
            let mut seen = HashSet::new();
            let mut dirs = Vec::new();
            walk(&dir, 0, &mut seen, &mut dirs)?;
            dirs.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
            for (_, files) in dirs {
                for path in files {
                    samples.push(Sample {
                        path,
                        label: label as i64,
                    });
                }
                if samples.len() > MAX_SAMPLES {
                    return Err(Error::file(
                        root,
                        format!("holds more than {MAX_SAMPLES} images"),
                    ));
                }
            }
            if samples.len() == before {
                empty.push(class.as_str());
            }
        }
        if !empty.is_empty() {
            return Err(Error::file(
                root,
                format!(
                    "found no valid file for the classes {}. Supported extensions are: {}",
                    empty.join(", "),
                    IMG_EXTENSIONS.join(", ")
                ),
            ));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }

    /// A seeded, stratified hold-out: from each class with at least 2 samples,
    /// `ceil(fraction * n)` samples (at most `n - 1`) go to the second folder. Both keep the
    /// folder's order and classes.
    pub fn split(&self, fraction: f64, seed: u64) -> (ImageFolder, ImageFolder) {
        let mut held = vec![false; self.samples.len()];
        let mut by_class = vec![Vec::new(); self.classes.len()];
        for (i, s) in self.samples.iter().enumerate() {
            by_class[s.label as usize].push(i);
        }
        for (label, mut members) in by_class.into_iter().enumerate() {
            let n = members.len();
            if n < 2 {
                continue;
            }
            let take = ((fraction * n as f64).ceil() as usize).clamp(0, n - 1);
            Rng::derive(seed, &[Rng::SPLIT, label as u64]).shuffle(&mut members);
            for &i in &members[..take] {
                held[i] = true;
            }
        }
        let part = |keep: bool| ImageFolder {
            root: self.root.clone(),
            classes: self.classes.clone(),
            samples: self
                .samples
                .iter()
                .zip(&held)
                .filter(|(_, &h)| h == keep)
                .map(|(s, _)| s.clone())
                .collect(),
        };
        (part(false), part(true))
    }
}

/// Whether `name` ends (any case) in one of [`IMG_EXTENSIONS`].
pub fn is_image_file(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// Every folder under `dir` (itself included) with its image files sorted by name. Links are
/// followed; a folder already walked (same device and inode) is not walked again.
fn walk(
    dir: &Path,
    depth: usize,
    seen: &mut HashSet<(u64, u64)>,
    out: &mut Vec<(PathBuf, Vec<PathBuf>)>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::file(
            dir,
            format!("folders nest more than {MAX_DEPTH} deep"),
        ));
    }
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if !seen.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
    }
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => subdirs.push(path),
            // A broken link or a file that vanished: torchvision lists it, and it fails to load.
            _ => {
                if entry.file_name().to_str().is_some_and(is_image_file) {
                    files.push(path);
                }
            }
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    out.push((dir.to_path_buf(), files));
    for sub in subdirs {
        walk(&sub, depth + 1, seen, out)?;
    }
    Ok(())
}

/// A batch of decoded, preprocessed images.
#[derive(Debug)]
pub struct Batch {
    /// `float32 [B, 3, R, R]`.
    pub images: Tensor,
    /// `int64 [B]`.
    pub labels: Tensor,
    /// The files left out of this batch, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The batches of `samples` taken in `order`, each image read, decoded and prepared by `prep` on
/// `workers` threads, at most about two batches ahead of the consumer. A batch holds
/// `batch_size` images except the last; files that fail are reported in the batch that would
/// have held them (a final batch of only failures has no images: `images` is empty).
pub fn batches(
    samples: Arc<Vec<Sample>>,
    order: Vec<usize>,
    prep: SamplePrep,
    batch_size: usize,
    workers: usize,
) -> impl Iterator<Item = Result<Batch>> {
    let window = 2 * batch_size.max(1);
    let s = Arc::clone(&samples);
    let prepared = ordered_map(order, workers, window, move |i: usize| {
        let sample = &s[i];
        let out = crate::images::read_and_decode(&sample.path)
            .and_then(|img| {
                img.to_tensor()
                    .map_err(|e| format!("cannot hold the pixels: {e}"))
            })
            .and_then(|t| prep.apply(&t, i).map_err(|e| e.to_string()));
        (i, out)
    });
    Batcher {
        samples,
        prepared: Box::new(prepared),
        batch_size: batch_size.max(1),
    }
}

/// A prepared sample: its index, and its image or why it failed (`None`: the worker panicked).
type Prepared = Option<(usize, std::result::Result<Tensor, String>)>;

struct Batcher {
    samples: Arc<Vec<Sample>>,
    prepared: Box<dyn Iterator<Item = Prepared>>,
    batch_size: usize,
}

impl Iterator for Batcher {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let mut images = Vec::with_capacity(self.batch_size);
        let mut labels = Vec::with_capacity(self.batch_size);
        let mut skipped = Vec::new();
        let mut any = false;
        while images.len() < self.batch_size {
            let Some(item) = self.prepared.next() else {
                break;
            };
            any = true;
            match item {
                Some((i, Ok(t))) => {
                    images.push(t);
                    labels.push(self.samples[i].label);
                }
                Some((i, Err(why))) => skipped.push((self.samples[i].path.clone(), why)),
                None => skipped.push((PathBuf::from("?"), "the decoder panicked".into())),
            }
        }
        if !any {
            return None;
        }
        let images = if images.is_empty() {
            Ok(Tensor::empty([0], (Kind::Float, tch::Device::Cpu)))
        } else {
            Tensor::f_stack(&images, 0).map_err(Error::from)
        };
        Some(images.map(|images| Batch {
            images,
            labels: Tensor::from_slice(&labels),
            skipped,
        }))
    }
}
