//! Image files to RGB pixels, as torchvision's reference pipeline gets them from PIL:
//! `PIL.Image.open(path).convert("RGB")`, then `pil_to_tensor`.
//!
//! JPEG is decoded by libjpeg-turbo with Pillow's settings ([`jpeg`]), bit for bit as Pillow;
//! a JPEG that ends before its last scanline is "image file is truncated". The other formats
//! (PNG, WebP, BMP, TIFF) use the `image` crate. The format is recognized from the content, not
//! the extension. The conversion to RGB follows Pillow's rules:
//! - grayscale is replicated to three channels; palette images take the palette's colors;
//! - alpha is dropped, not composited (Pillow's `RGBA → RGB` copies the color channels);
//! - 16-bit grayscale (Pillow mode `I;16`) is clamped to 255, as Pillow's `I;16 → RGB`, while
//!   16-bit color and 16-bit gray+alpha PNGs keep the high byte (Pillow unpacks them to 8 bits);
//! - CMYK JPEGs (Adobe's inverted convention, YCCK included) go through Pillow's `cmyk2rgb`;
//! - EXIF orientation is ignored: `PIL.Image.open` does not transpose, so neither do we;
//! - embedded ICC profiles and PNG gamma are ignored, as `convert("RGB")` ignores them.
//!
//! [`decode_draft`] is Pillow's `Image.draft`: JPEGs decoded at 1/2, 1/4 or 1/8 scale in the
//! DCT domain (faster, and not the pixels of a full decode and resize).
//!
//! [`find_images`] expands folders into the image files under them.

mod jpeg;

use crate::{Error, Result};
use image::{ColorType, ImageDecoder, ImageFormat, ImageReader, Limits};
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

/// Image files larger than this (256 MiB) are refused: a photo is a few MB; this bounds the
/// memory a single input can take before decoding.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// Reads a regular file of at most [`MAX_IMAGE_BYTES`] ([`crate::file::read_regular`]) and
/// decodes it to RGB ([`decode`]); the error says why it cannot, without the path.
pub fn read_and_decode(path: &Path) -> std::result::Result<RgbImage, String> {
    decode(&read_image_file(path)?)
}

/// [`read_and_decode`] with [`decode_draft`]: a JPEG is decoded at the largest DCT-domain
/// reduction that keeps it at least `min_width` x `min_height` (Pillow's `Image.draft`).
pub fn read_and_decode_draft(
    path: &Path,
    min_width: u32,
    min_height: u32,
) -> std::result::Result<RgbImage, String> {
    decode_draft(&read_image_file(path)?, min_width, min_height)
}

/// The bytes of a regular file of at most [`MAX_IMAGE_BYTES`], or why it cannot be read.
fn read_image_file(path: &Path) -> std::result::Result<Vec<u8>, String> {
    use crate::file::{read_regular, Refusal};
    let limit = MAX_IMAGE_BYTES >> 20;
    read_regular(path, MAX_IMAGE_BYTES).map_err(|refusal| match refusal {
        Refusal::Io(e) => format!("cannot read: {e}"),
        Refusal::NotRegular(_) => "not a regular file".into(),
        Refusal::TooLarge { grew: false, bytes } => {
            format!("file is {bytes} bytes, more than the {limit} MiB limit for an image")
        }
        Refusal::TooLarge { grew: true, .. } => {
            format!("file grew past the {limit} MiB limit while being read")
        }
        Refusal::NoMemory { bytes } => format!("cannot hold {bytes} bytes"),
    })
}

/// The most pixels an image may have: Pillow's decompression-bomb limit
/// (`Image.MAX_IMAGE_PIXELS * 2`, above which `PIL.Image.open` raises `DecompressionBombError`).
/// Checked from the header, before anything is decoded.
pub const MAX_IMAGE_PIXELS: u64 = 178_956_970;

/// The most bytes a decoder may allocate (`image::Limits::max_alloc`, libjpeg's
/// `max_memory_to_use`): the decoded buffer of the largest image allowed, 16-bit RGBA.
const MAX_DECODE_BYTES: u64 = MAX_IMAGE_PIXELS * 8;

/// Whether `bytes` start as a JPEG does (Pillow's `JpegImagePlugin._accept`: `FF D8 FF`).
fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes an encoded image to RGB as `PIL.Image.open(p).convert("RGB")`; the error says why it
/// cannot.
///
/// Images over [`MAX_IMAGE_PIXELS`] are refused from their header; a JPEG whose data ends before
/// the decoder has its last scanline is refused as truncated (Pillow: "image file is
/// truncated"). The buffers for the pixels are allocated fallibly: an image too large for the
/// memory left is an error, not an abort.
pub fn decode(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if is_jpeg(bytes) {
        return jpeg::decode(bytes, MAX_DECODE_BYTES, |_, _| 1);
    }
    decode_other(bytes)
}

/// [`decode`], but a JPEG is decoded at 1/2, 1/4 or 1/8 of its size in the DCT domain, the
/// largest reduction that keeps it at least `min_width` x `min_height`: the pixels of Pillow's
/// `im.draft("RGB", (min_width, min_height)); im.convert("RGB")` (a zero minimum counts as 1).
/// Other formats are decoded at full size, as `draft` leaves them.
pub fn decode_draft(
    bytes: &[u8],
    min_width: u32,
    min_height: u32,
) -> std::result::Result<RgbImage, String> {
    if is_jpeg(bytes) {
        return jpeg::decode(bytes, MAX_DECODE_BYTES, |w, h| {
            jpeg::draft_scale(w, h, min_width, min_height)
        });
    }
    decode_other(bytes)
}

/// [`decode`] for the formats the `image` crate reads.
fn decode_other(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let format = reader.format().ok_or_else(|| {
        "not an image in a supported format (JPEG, PNG, WebP, BMP, TIFF)".to_string()
    })?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let failed = |e: image::ImageError| format!("cannot decode {format:?}: {}", message(&e));
    // A decoder bug must not take down the other inputs: a panic becomes this input's error.
    let (color, width, height, raw) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let decoder = reader.into_decoder().map_err(failed)?;
            let (width, height) = decoder.dimensions();
            check_pixels(width, height)?;
            let color = decoder.color_type();
            let mut raw = try_vec(decoder.total_bytes())?;
            raw.resize(raw.capacity(), 0);
            decoder.read_image(&mut raw).map_err(failed)?;
            Ok::<_, String>((color, width, height, raw))
        }))
        .map_err(|_| format!("the {format:?} decoder crashed on this file"))??;
    let gray16 = format == ImageFormat::Png && png_is_gray16(bytes);
    to_rgb(color, width, height, raw, gray16)
}

/// Refuses images of more than [`MAX_IMAGE_PIXELS`] (or none).
fn check_pixels(width: u32, height: u32) -> std::result::Result<(), String> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(format!("the image is {width}x{height}"));
    }
    if pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "the image is {width}x{height}, {pixels} pixels, more than the limit of \
             {MAX_IMAGE_PIXELS} (Pillow's decompression-bomb limit); not decoded"
        ));
    }
    Ok(())
}

/// An empty vector with room for `len` bytes, or an error if that memory cannot be had.
fn try_vec(len: u64) -> std::result::Result<Vec<u8>, String> {
    let mut v = Vec::new();
    usize::try_from(len)
        .ok()
        .and_then(|n| v.try_reserve_exact(n).ok())
        .ok_or_else(|| format!("out of memory: cannot allocate {len} bytes for the pixels"))?;
    Ok(v)
}

/// A decoder's message on one line, with the `png` crate's `ChunkType { type: IDAT, .. }`
/// debug text reduced to the chunk's name.
fn message(error: &image::ImageError) -> String {
    let mut text = error.to_string().trim_end().replace('\n', " ");
    const CHUNK: &str = "ChunkType { type: ";
    while let Some(start) = text.find(CHUNK) {
        let rest = &text[start + CHUNK.len()..];
        let (Some(comma), Some(end)) = (rest.find(','), rest.find(" }")) else {
            break;
        };
        let name = rest[..comma.min(end)].to_string();
        text.replace_range(start..start + CHUNK.len() + end + 2, &name);
    }
    text
}

/// Whether a PNG's header says 16-bit grayscale (colour type 0), which Pillow opens as `I;16`
/// even when a tRNS chunk makes the `image` crate add an alpha channel.
fn png_is_gray16(bytes: &[u8]) -> bool {
    // Signature (8), IHDR length (4) and type (4), width (4), height (4), bit depth, colour type.
    bytes.len() > 25 && &bytes[12..16] == b"IHDR" && bytes[24] == 16 && bytes[25] == 0
}

/// Pillow's `convert("RGB")` of a decoder's pixels (`raw`: samples of `color`, 16-bit and float
/// samples in native byte order). `gray16` marks 16-bit grayscale PNGs.
fn to_rgb(
    color: ColorType,
    width: u32,
    height: u32,
    raw: Vec<u8>,
    gray16: bool,
) -> std::result::Result<RgbImage, String> {
    let clamp16 = |v: u16| v.min(255) as u8;
    let high = |v: u16| (v >> 8) as u8;
    let u16_at = |p: &[u8], i: usize| u16::from_ne_bytes([p[2 * i], p[2 * i + 1]]);
    // f32 to u8 as the `image` crate converts: clamp to [0, 1], scale, round.
    let f32_at = |p: &[u8], i: usize| {
        let v = f32::from_ne_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    if color == ColorType::Rgb8 {
        return Ok(RgbImage {
            width,
            height,
            data: raw,
        });
    }
    let mut data = try_vec(u64::from(width) * u64::from(height) * 3)?;
    let gray = |data: &mut Vec<u8>, values: &mut dyn Iterator<Item = u8>| {
        data.extend(values.flat_map(|v| [v, v, v]))
    };
    let pixels = |n: usize| raw.chunks_exact(n);
    match color {
        ColorType::Rgba8 => data.extend(pixels(4).flat_map(|p| [p[0], p[1], p[2]])),
        ColorType::L8 => gray(&mut data, &mut raw.iter().copied()),
        ColorType::La8 => gray(&mut data, &mut pixels(2).map(|p| p[0])),
        ColorType::L16 => gray(&mut data, &mut pixels(2).map(|p| clamp16(u16_at(p, 0)))),
        ColorType::La16 => {
            let level = if gray16 { clamp16 } else { high };
            gray(&mut data, &mut pixels(4).map(|p| level(u16_at(p, 0))))
        }
        ColorType::Rgb16 => data.extend(pixels(2).map(|p| high(u16_at(p, 0)))),
        ColorType::Rgba16 => {
            data.extend(pixels(8).flat_map(|p| [0, 1, 2].map(|c| high(u16_at(p, c)))))
        }
        ColorType::Rgb32F => data.extend(pixels(4).map(|p| f32_at(p, 0))),
        ColorType::Rgba32F => data.extend(pixels(16).flat_map(|p| [0, 1, 2].map(|c| f32_at(p, c)))),
        other => return Err(format!("unsupported pixel type {other:?}")),
    }
    Ok(RgbImage {
        width,
        height,
        data,
    })
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

    /// Native-endian bytes of 16-bit samples.
    fn ne16(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    #[test]
    fn pillow_conversions() {
        let la16 = ne16(&[300, 1, 1000, 2]);
        let rgb = to_rgb(ColorType::La16, 2, 1, la16.clone(), true).unwrap();
        assert_eq!(rgb.data, [255, 255, 255, 255, 255, 255]);
        let rgb = to_rgb(ColorType::La16, 2, 1, la16, false).unwrap();
        assert_eq!(rgb.data, [1, 1, 1, 3, 3, 3]);
        let l16 = to_rgb(ColorType::L16, 2, 1, ne16(&[7, 256]), true).unwrap();
        assert_eq!(l16.data, [7, 7, 7, 255, 255, 255]);
        let rgba = to_rgb(ColorType::Rgba8, 1, 1, vec![10, 20, 30, 0], false).unwrap();
        assert_eq!(rgba.data, [10, 20, 30]);
        let rgba16 = to_rgb(
            ColorType::Rgba16,
            1,
            1,
            ne16(&[0x1234, 0xff00, 7, 9]),
            false,
        );
        assert_eq!(rgba16.unwrap().data, [0x12, 0xff, 0]);
        let f: Vec<u8> = [0.5f32, -1.0, 2.0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(
            to_rgb(ColorType::Rgb32F, 1, 1, f, false).unwrap().data,
            [128, 0, 255]
        );
    }

    #[test]
    fn png_chunk_type_is_named() {
        let e = image::ImageError::IoError(std::io::Error::other(
            "CRC error: expected 0x1 have 0x2 while decoding ChunkType { type: IDAT, critical: \
             true, private: false, reserved: false, safecopy: false } chunk.\n",
        ));
        assert_eq!(
            message(&e),
            "CRC error: expected 0x1 have 0x2 while decoding IDAT chunk."
        );
    }
}
