//! Image files to RGB pixels, as torchvision's reference pipeline gets them from PIL:
//! `PIL.Image.open(path).convert("RGB")`, then `pil_to_tensor`.
//!
//! Decoding uses the `image` crate (JPEG, PNG, WebP, BMP, TIFF; the format is recognized from the
//! content, not the extension). The conversion to RGB follows Pillow's rules:
//! - grayscale is replicated to three channels; palette images take the palette's colors;
//! - alpha is dropped, not composited (Pillow's `RGBA → RGB` copies the color channels);
//! - 16-bit grayscale (Pillow mode `I;16`) is clamped to 255, as Pillow's `I;16 → RGB`, while
//!   16-bit color and 16-bit gray+alpha PNGs keep the high byte (Pillow unpacks them to 8 bits);
//! - EXIF orientation is ignored: `PIL.Image.open` does not transpose, so neither do we;
//! - embedded ICC profiles and PNG gamma are ignored, as `convert("RGB")` ignores them.
//!
//! JPEG pixels can differ from Pillow's (libjpeg-turbo) by a few levels where the two decoders'
//! IDCT and chroma upsampling round differently; `tests/classify_preprocess.rs` reports by how
//! much.
//!
//! [`find_images`] expands folders into the image files under them.

use crate::{Error, Result};
use image::{DynamicImage, ImageFormat, ImageReader};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// File extensions (lowercase) of the images found in folders.
pub const EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"];

/// An 8-bit RGB image, rows of `[r, g, b]` pixels (Pillow's `RGB` mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `height * width * 3` bytes, row-major, interleaved.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The pixels as `uint8 [3, H, W]`: a channels-first view of the interleaved buffer, with the
    /// strides torchvision's `pil_to_tensor` gives (`[H, W, 3]` permuted).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (h, w) = (self.height as i64, self.width as i64);
        Ok(Tensor::f_from_slice(&self.data)?
            .f_view([h, w, 3])?
            .f_permute([2, 0, 1])?)
    }
}

/// Reads and decodes an image file to RGB (see the module docs for the conversion rules).
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes).map_err(|msg| Error::file(path, msg))
}

/// Decodes an encoded image to RGB; the error says why it cannot.
pub fn decode(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let format = reader.format().ok_or_else(|| {
        "not an image in a supported format (JPEG, PNG, WebP, BMP, TIFF)".to_string()
    })?;
    // A decoder bug must not take down the other inputs: a panic becomes this input's error.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| format!("the {format:?} decoder crashed on this file"))?
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    let gray16 = format == ImageFormat::Png && png_is_gray16(bytes);
    Ok(to_rgb(decoded, gray16))
}

/// Whether a PNG's header says 16-bit grayscale (colour type 0), which Pillow opens as `I;16`
/// even when a tRNS chunk makes the `image` crate add an alpha channel.
fn png_is_gray16(bytes: &[u8]) -> bool {
    // Signature (8), IHDR length (4) and type (4), width (4), height (4), bit depth, colour type.
    bytes.len() > 25 && &bytes[12..16] == b"IHDR" && bytes[24] == 16 && bytes[25] == 0
}

/// Pillow's `convert("RGB")` of the decoded pixels. `gray16` marks 16-bit grayscale PNGs.
fn to_rgb(image: DynamicImage, gray16: bool) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let clamp16 = |v: u16| v.min(255) as u8;
    let high = |v: u16| (v >> 8) as u8;
    let gray = |values: &mut dyn Iterator<Item = u8>| values.flat_map(|v| [v, v, v]).collect();
    let data: Vec<u8> = match image {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(b) => gray(&mut b.into_raw().into_iter()),
        DynamicImage::ImageLumaA8(b) => gray(&mut b.chunks_exact(2).map(|p| p[0])),
        DynamicImage::ImageLuma16(b) => gray(&mut b.iter().map(|&v| clamp16(v))),
        DynamicImage::ImageLumaA16(b) => {
            let level = if gray16 { clamp16 } else { high };
            gray(&mut b.chunks_exact(2).map(|p| level(p[0])))
        }
        DynamicImage::ImageRgb16(b) => b.iter().map(|&v| high(v)).collect(),
        DynamicImage::ImageRgba16(b) => b
            .chunks_exact(4)
            .flat_map(|p| [high(p[0]), high(p[1]), high(p[2])])
            .collect(),
        other => other.to_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        data,
    }
}

/// One input: an image file to classify, or a path that could not be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Image(PathBuf),
    Unreadable { path: PathBuf, reason: String },
}

impl Input {
    pub fn path(&self) -> &Path {
        match self {
            Input::Image(p) => p,
            Input::Unreadable { path, .. } => path,
        }
    }
}

/// Whether `path` has one of [`EXTENSIONS`] (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Expands `paths` in order: a file is taken as it is (whatever its extension); a folder
/// becomes the image files under it (recursively, by [`EXTENSIONS`], sorted by path; symbolic
/// links to folders are not followed). Paths that cannot be read are returned as
/// [`Input::Unreadable`] in their place.
pub fn find_images(paths: &[PathBuf]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Err(e) => inputs.push(Input::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            }),
            Ok(m) if m.is_dir() => {
                let mut found = Vec::new();
                walk(path, &mut found);
                found.sort_by(|a, b| a.path().cmp(b.path()));
                inputs.extend(found);
            }
            Ok(m) if m.is_file() => inputs.push(Input::Image(path.clone())),
            Ok(_) => inputs.push(not_regular(path)),
        }
    }
    inputs
}

/// A FIFO, socket or device: reading it could block forever or never end.
fn not_regular(path: &Path) -> Input {
    Input::Unreadable {
        path: path.to_path_buf(),
        reason: "not a regular file".into(),
    }
}

fn walk(dir: &Path, found: &mut Vec<Input>) {
    let unlistable = |e: std::io::Error| Input::Unreadable {
        path: dir.to_path_buf(),
        reason: format!("cannot list folder: {e}"),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return found.push(unlistable(e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                found.push(unlistable(e));
                continue;
            }
        };
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, found),
            // Files, and links to files (links to folders are skipped: no cycles).
            Ok(_) if has_image_extension(&path) => match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => found.push(Input::Image(path)),
                Ok(m) if m.is_dir() => {}
                Ok(_) => found.push(not_regular(&path)),
                Err(e) => found.push(Input::Unreadable {
                    path,
                    reason: e.to_string(),
                }),
            },
            Ok(_) => {}
            Err(e) => found.push(Input::Unreadable {
                path,
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray16_png_header() {
        let mut header = vec![0u8; 33];
        header[12..16].copy_from_slice(b"IHDR");
        header[24] = 16;
        assert!(png_is_gray16(&header));
        header[25] = 4;
        assert!(!png_is_gray16(&header));
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert_eq!(decode(b"").unwrap_err(), "empty file");
        assert!(decode(b"hello, this is text")
            .unwrap_err()
            .contains("not an image"));
        let truncated_png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0";
        assert!(decode(truncated_png).is_err());
    }

    #[test]
    fn pillow_conversions() {
        let la16 =
            image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(2, 1, vec![300, 1, 1000, 2])
                .unwrap();
        let rgb = to_rgb(DynamicImage::ImageLumaA16(la16.clone()), true);
        assert_eq!(rgb.data, [255, 255, 255, 255, 255, 255]);
        let rgb = to_rgb(DynamicImage::ImageLumaA16(la16), false);
        assert_eq!(rgb.data, [1, 1, 1, 3, 3, 3]);
        let l16 = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![7, 256]).unwrap();
        assert_eq!(
            to_rgb(DynamicImage::ImageLuma16(l16), true).data,
            [7, 7, 7, 255, 255, 255]
        );
        let rgba = image::RgbaImage::from_raw(1, 1, vec![10, 20, 30, 0]).unwrap();
        assert_eq!(
            to_rgb(DynamicImage::ImageRgba8(rgba), false).data,
            [10, 20, 30]
        );
    }
}
