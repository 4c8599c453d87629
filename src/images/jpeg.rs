//! JPEG to RGB as `PIL.Image.open(p).convert("RGB")` gets it: libjpeg-turbo (the decoder Pillow
//! ships; turbojpeg-sys builds it from source) driven by src/ffi/jpeg.c with the settings of
//! Pillow's `JpegDecode.c` and `JpegImagePlugin.py`, then Pillow's `convert("RGB")`
//! (`Convert.c`): grayscale replicated, Adobe CMYK (Pillow's raw mode `CMYK;I`, inverted)
//! through `cmyk2rgb`.
//!
//! A file that ends before the decoder has every scanline is "image file is truncated", as in
//! Pillow; libjpeg's warnings (extraneous bytes before a marker, a premature end of a scan
//! segment) are ignored, as Pillow ignores them.

use super::{check_pixels, try_vec, RgbImage};
use std::os::raw::{c_char, c_int, c_long};
// The libjpeg-turbo static library that src/ffi/jpeg.c calls; no Rust item of the crate is used.
use turbojpeg_sys as _;

/// The decoder's handle (src/ffi/jpeg.c's `MnJpeg`).
#[repr(C)]
struct MnJpeg {
    _private: [u8; 0],
}

/// src/ffi/jpeg.c's `MnJpegHeader`.
#[repr(C)]
#[derive(Default)]
struct Header {
    width: u32,
    height: u32,
    components: i32,
    precision: i32,
    out_width: u32,
    out_height: u32,
    out_components: i32,
}

/// Status codes of src/ffi/jpeg.c.
const OK: c_int = 0;
const TRUNCATED: c_int = 2;
/// The size of a message buffer (`MN_JPEG_MSG`).
const MESSAGE: usize = 200;

extern "C" {
    fn mn_jpeg_open(
        data: *const u8,
        len: usize,
        max_memory: c_long,
        out: *mut *mut MnJpeg,
        header: *mut Header,
        message: *mut c_char,
    ) -> c_int;
    fn mn_jpeg_scale(
        h: *mut MnJpeg,
        scale_denom: c_int,
        header: *mut Header,
        message: *mut c_char,
    ) -> c_int;
    fn mn_jpeg_read(h: *mut MnJpeg, pixels: *mut u8, stride: usize, message: *mut c_char) -> c_int;
    fn mn_jpeg_close(h: *mut MnJpeg);
}

/// An open decoder; closed on drop.
struct Decoder(*mut MnJpeg);

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from mn_jpeg_open (or is null) and is closed once.
        unsafe { mn_jpeg_close(self.0) }
    }
}

/// The error for a status that is not OK, with the decoder's message.
fn failure(status: c_int, message: &[c_char; MESSAGE]) -> String {
    let bytes: Vec<u8> = message
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let text = String::from_utf8_lossy(&bytes);
    if status == TRUNCATED {
        text.into_owned()
    } else {
        format!("cannot decode JPEG: {text}")
    }
}

/// Pillow's `JpegImageFile.draft(mode, (min_width, min_height))`: the largest of 8, 4, 2 and 1
/// that `min(width // min_width, height // min_height)` reaches (a zero minimum counts as 1).
pub fn draft_scale(width: u32, height: u32, min_width: u32, min_height: u32) -> u32 {
    let scale = (width / min_width.max(1)).min(height / min_height.max(1));
    [8, 4, 2].into_iter().find(|&s| scale >= s).unwrap_or(1)
}

/// Decodes a JPEG to RGB, its DCT scaled by 1/`scale(width, height)` (1, 2, 4 or 8; 1 is
/// Pillow's plain decode). `max_memory` bounds libjpeg's coefficient buffers.
pub fn decode(
    bytes: &[u8],
    max_memory: u64,
    scale: impl FnOnce(u32, u32) -> u32,
) -> Result<RgbImage, String> {
    let mut message = [0 as c_char; MESSAGE];
    let mut header = Header::default();
    let mut handle = std::ptr::null_mut();
    let max_memory = c_long::try_from(max_memory).unwrap_or(c_long::MAX);
    // SAFETY: `bytes` outlives the decoder (dropped at the end of this function); the out
    // pointers are valid for writes; `message` has MN_JPEG_MSG bytes.
    let status = unsafe {
        mn_jpeg_open(
            bytes.as_ptr(),
            bytes.len(),
            max_memory,
            &mut handle,
            &mut header,
            message.as_mut_ptr(),
        )
    };
    let decoder = Decoder(handle);
    if status != OK {
        return Err(failure(status, &message));
    }
    // Pillow's JpegImagePlugin: 8-bit samples, 1, 3 or 4 layers.
    if header.precision != 8 {
        return Err(format!("cannot handle {}-bit layers", header.precision));
    }
    if ![1, 3, 4].contains(&header.components) {
        return Err(format!("cannot handle {}-layer images", header.components));
    }
    check_pixels(header.width, header.height)?;
    let denom = scale(header.width, header.height);
    // SAFETY: the handle is open and its header read; the pointers are valid.
    let status =
        unsafe { mn_jpeg_scale(decoder.0, denom as c_int, &mut header, message.as_mut_ptr()) };
    if status != OK {
        return Err(failure(status, &message));
    }
    let (width, height) = (header.out_width, header.out_height);
    let channels = header.out_components as usize;
    let stride = width as usize * channels;
    let mut raw = try_vec(stride as u64 * u64::from(height))?;
    raw.resize(raw.capacity(), 0);
    // SAFETY: `raw` holds `height` rows of `stride` bytes, the decoder's output.
    let status = unsafe { mn_jpeg_read(decoder.0, raw.as_mut_ptr(), stride, message.as_mut_ptr()) };
    if status != OK {
        return Err(failure(status, &message));
    }
    drop(decoder);
    let data = match channels {
        3 => raw,
        1 => {
            let mut data = try_vec(raw.len() as u64 * 3)?;
            data.extend(raw.iter().flat_map(|&v| [v, v, v]));
            data
        }
        4 => {
            let mut data = try_vec(raw.len() as u64 / 4 * 3)?;
            data.extend(raw.chunks_exact(4).flat_map(cmyk_to_rgb));
            data
        }
        n => return Err(format!("the JPEG decoder wrote {n} channels")),
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// One pixel as libjpeg writes an Adobe CMYK JPEG (inverted) to RGB: Pillow's raw mode
/// `CMYK;I` (`255 - v`), then `cmyk2rgb` (`Convert.c`) with its rounding `MULDIV255`.
fn cmyk_to_rgb(raw: &[u8]) -> [u8; 3] {
    // nk = 255 - k, where k = 255 - raw[3].
    let nk = i32::from(raw[3]);
    let channel = |v: u8| {
        let t = (255 - i32::from(v)) * nk + 128;
        (nk - (((t >> 8) + t) >> 8)).clamp(0, 255) as u8
    };
    [channel(raw[0]), channel(raw[1]), channel(raw[2])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_scale_is_pillows() {
        // min(w // W, h // H), then the largest of 8, 4, 2, 1 it reaches.
        assert_eq!(draft_scale(2000, 1500, 224, 224), 4);
        assert_eq!(draft_scale(2000, 1500, 250, 187), 8);
        assert_eq!(draft_scale(500, 375, 256, 256), 1);
        assert_eq!(draft_scale(500, 375, 1000, 1000), 1);
        assert_eq!(draft_scale(600, 600, 200, 100), 2);
        assert_eq!(draft_scale(100, 100, 0, 0), 8);
    }

    #[test]
    fn cmyk_is_pillows() {
        // Raw (inverted) samples: 255 is no ink. White, black, and a mid value.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 128, 255, 255]), [0, 128, 255]);
        // nk = 200, c = 155: 200 - (155 * 200 + 128) / 255 (Pillow's rounding) = 78.
        assert_eq!(cmyk_to_rgb(&[100, 100, 100, 200])[0], 78);
    }
}
