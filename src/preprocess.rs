//! The evaluation transforms that published MobileNet weights were trained for, in two
//! implementations of the same steps: PIL's (the default of `classify`) and torchvision's tensor
//! path.
//!
//! [`PilTransform`] replicates `weights.transforms()(Image.open(p).convert("RGB"))` bit for bit,
//! torchvision's `ImageClassification` and timm's `transforms_imagenet_eval` on a PIL image:
//! Pillow's fixed-point resampler on `uint8` ([`resample`]), the center crop (zero-padded when the
//! crop is larger), then `pil_to_tensor` + `convert_image_dtype` (timm: `to_tensor`), both
//! `x / 255` in `float32`, and `(x - mean) / std`, through a per-channel table of those 256 values
//! computed with the same libtorch ops. This is what published accuracy numbers and most user
//! scripts run.
//!
//! [`Transform::apply`], done with libtorch ops on the model's device, replicates torchvision's tensor path of `ImageClassification`
//! (`torchvision/transforms/_presets.py`, `_functional_tensor.py`) step by step: the `uint8` image
//! is cast to `float32`, resized (shorter side to `resize`, antialiased bilinear or bicubic,
//! `align_corners=False`), clamped (bicubic), rounded and cast back to `uint8`; center-cropped to
//! `crop` (zero-padded when smaller, crop offsets rounded half to even as Python's `round`);
//! scaled to `[0, 1]` and normalized with the weights' mean and std. timm's evaluation transform
//! (`timm/data/transforms_factory.py`, `transforms_imagenet_eval`) is the same sequence with its
//! own interpolation, `resize = floor(crop / crop_pct)` and mean/std, so one [`Transform`] covers
//! both.

pub mod resample;

use crate::images::RgbImage;
use crate::models::{Arch, PublishedWeights};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

/// ImageNet mean and std (torchvision's defaults).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// timm's `IMAGENET_INCEPTION_MEAN` / `_STD`, used by its MobileNet V1 weights.
pub const INCEPTION_MEAN: [f64; 3] = [0.5, 0.5, 0.5];
pub const INCEPTION_STD: [f64; 3] = [0.5, 0.5, 0.5];

/// A resized image larger than this many pixels (e.g. from an extreme aspect ratio: 1x10000
/// resized to a 232 shorter side) is refused rather than allocated.
pub const MAX_RESIZED_PIXELS: i64 = 1 << 24;

/// The resampling filter of the resize step (always antialiased, as torchvision's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

impl std::fmt::Display for Interpolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        })
    }
}

/// Resize the shorter side to `resize`, center-crop `crop` x `crop`, scale to `[0, 1]`,
/// normalize per channel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    pub resize: i64,
    pub crop: i64,
    pub interpolation: Interpolation,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Transform {
    /// torchvision's `ImageClassification(crop_size=224, resize_size=resize)`.
    pub const fn torchvision(resize: i64) -> Transform {
        Transform {
            resize,
            crop: 224,
            interpolation: Interpolation::Bilinear,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// timm's eval transform for its MobileNet V1 weights: bicubic, mean = std = 0.5;
    /// `resize` is `floor(224 / crop_pct)`.
    pub const fn timm_inception(resize: i64) -> Transform {
        Transform {
            resize,
            crop: 224,
            interpolation: Interpolation::Bicubic,
            mean: INCEPTION_MEAN,
            std: INCEPTION_STD,
        }
    }

    /// Errors on sizes the model or the resize cannot take.
    pub fn validate(&self) -> Result<()> {
        if !(1..=8192).contains(&self.resize) {
            return Err(Error::config(
                "resize",
                format!("{} is not in 1..=8192", self.resize),
            ));
        }
        if !(32..=8192).contains(&self.crop) {
            return Err(Error::config(
                "crop",
                format!(
                    "{} is not in 32..=8192 (the models need at least 32x32)",
                    self.crop
                ),
            ));
        }
        for (name, values) in [("mean", self.mean), ("std", self.std)] {
            if values.iter().any(|v| !v.is_finite()) || (name == "std" && values.contains(&0.0)) {
                return Err(Error::config(name, format!("{values:?} is not usable")));
            }
        }
        Ok(())
    }

    /// The size `(height, width)` an `h` x `w` image is resized to: the shorter side becomes
    /// `resize`, the longer `int(resize * long / short)` (torchvision's
    /// `_compute_resized_output_size`).
    pub fn resized_size(&self, h: i64, w: i64) -> (i64, i64) {
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let new_long = ((self.resize * long) as f64 / short as f64) as i64;
        if w <= h {
            (new_long, self.resize)
        } else {
            (self.resize, new_long)
        }
    }

    /// Preprocesses one image: `uint8 [3, H, W]` (any strides, any device) to
    /// `float32 [3, crop, crop]` on the same device.
    pub fn apply(&self, image: &Tensor) -> Result<Tensor> {
        let size = image.size();
        if size.len() != 3 || size[0] != 3 || image.kind() != Kind::Uint8 {
            return Err(Error::bad_input(
                "preprocess",
                format!(
                    "expected a uint8 image [3, H, W], got {:?} {size:?}",
                    image.kind()
                ),
            ));
        }
        let (h, w) = (size[1], size[2]);
        if h < 1 || w < 1 {
            return Err(Error::bad_input(
                "preprocess",
                format!("the image is {w}x{h}"),
            ));
        }
        let resized = self.resize_uint8(image, h, w)?;
        let cropped = center_crop(&resized, self.crop)?;
        normalize(&cropped, self.mean, self.std)
    }

    /// torchvision's `resize` on a `uint8` tensor: float32, antialiased interpolation, (bicubic:
    /// clamp to [0, 255]), round, back to `uint8`. Skipped when the size does not change.
    fn resize_uint8(&self, image: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        let (nh, nw) = self.checked_resized_size(h, w)?;
        if (nh, nw) == (h, w) {
            return Ok(image.shallow_clone());
        }
        resize_uint8(image, nh, nw, self.interpolation)
    }

    /// [`Transform::resized_size`], or an error when the result is empty or larger than
    /// [`MAX_RESIZED_PIXELS`].
    fn checked_resized_size(&self, h: i64, w: i64) -> Result<(i64, i64)> {
        let (nh, nw) = self.resized_size(h, w);
        if nh < 1 || nw < 1 || nh.saturating_mul(nw) > MAX_RESIZED_PIXELS {
            return Err(Error::bad_input(
                "preprocess",
                format!(
                    "a {w}x{h} image resized to a shorter side of {} would be {nw}x{nh}, more than \
                     {MAX_RESIZED_PIXELS} pixels (extreme aspect ratio)",
                    self.resize
                ),
            ));
        }
        Ok((nh, nw))
    }
}

/// A [`Transform`] as it runs on a PIL image (`weights.transforms()(pil_image)`), with its
/// normalization table.
#[derive(Debug, Clone)]
pub struct PilTransform {
    transform: Transform,
    /// Per channel, `(v / 255 - mean) / std` in float32 for every byte value `v`.
    table: Vec<[f32; 256]>,
}

/// The center crop of a resized image: the bytes that come from the image (`height` rows of
/// `width` RGB pixels) and where they sit in the `crop` x `crop` square (the rest is zero
/// padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cropped {
    pub crop: usize,
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
    /// `height * width * 3` bytes, row-major, interleaved.
    pub data: Vec<u8>,
}

impl PilTransform {
    /// Checks `transform` ([`Transform::validate`]) and computes its normalization table with
    /// torchvision's ops (`uint8` to `float32`, `/ 255`, `- mean`, `/ std`).
    pub fn new(transform: Transform) -> Result<PilTransform> {
        transform.validate()?;
        let values =
            Tensor::f_arange(256, (Kind::Uint8, tch::Device::Cpu))?.f_expand([3, 1, 256], false)?;
        let normalized: Vec<f32> = normalize(&values, transform.mean, transform.std)?
            .f_contiguous()?
            .f_view([-1])?
            .try_into()?;
        let table = normalized
            .chunks_exact(256)
            .map(|c| c.try_into().expect("256 values per channel"))
            .collect();
        Ok(PilTransform { transform, table })
    }

    /// The transform this runs.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Preprocesses one image: RGB pixels to `float32 [3, crop, crop]`, equal to the preset's
    /// transform of the PIL image holding them.
    pub fn apply(&self, image: &RgbImage) -> Result<Tensor> {
        self.to_tensor(&self.resize_crop(image)?)
    }

    /// The resize (Pillow's, shorter side to `resize`) and the center crop, as bytes: only the
    /// cropped window of the resized image is computed ([`resample::resize_window`]).
    pub fn resize_crop(&self, image: &RgbImage) -> Result<Cropped> {
        let (w, h) = (image.width as usize, image.height as usize);
        if w == 0 || h == 0 || image.data.len() != w * h * 3 {
            return Err(Error::bad_input(
                "preprocess",
                format!(
                    "the image is {w}x{h} with {} bytes of RGB pixels",
                    image.data.len()
                ),
            ));
        }
        let (nh, nw) = self.transform.checked_resized_size(h as i64, w as i64)?;
        let (nh, nw) = (nh as usize, nw as usize);
        let crop = self.transform.crop as usize;
        let (top, y0, height) = crop_axis(nh, crop);
        let (left, x0, width) = crop_axis(nw, crop);
        let window = resample::Window {
            rows: y0..y0 + height,
            cols: x0..x0 + width,
        };
        let data = resample::resize_window(
            &image.data,
            (w, h),
            (nw, nh),
            &window,
            self.transform.interpolation,
        );
        Ok(Cropped {
            crop,
            top,
            left,
            height,
            width,
            data,
        })
    }

    /// `pil_to_tensor`, `convert_image_dtype` and `normalize` of a crop: `float32 [3, crop, crop]`
    /// (channels-last strides), zero padding included.
    pub fn to_tensor(&self, cropped: &Cropped) -> Result<Tensor> {
        let c = cropped.crop as i64;
        Ok(Tensor::f_from_slice(&self.to_floats(cropped))?
            .f_view([c, c, 3])?
            .f_permute([2, 0, 1])?)
    }

    /// [`PilTransform::to_tensor`]'s values in `[crop, crop, 3]` order (channels last, the
    /// layout the CPU model runs in), without libtorch (whose ops, called from many threads at
    /// once, each start a team of OpenMP threads).
    pub fn to_floats(&self, cropped: &Cropped) -> Vec<f32> {
        let c = cropped.crop;
        let value = |channel: usize, byte: u8| self.table[channel][byte as usize];
        let mut out = vec![0f32; c * c * 3];
        if cropped.height < c || cropped.width < c {
            for pixel in out.chunks_exact_mut(3) {
                for (channel, v) in pixel.iter_mut().enumerate() {
                    *v = value(channel, 0);
                }
            }
        }
        let rows = cropped.data.chunks_exact(cropped.width * 3);
        for (y, row) in rows.enumerate() {
            let start = ((cropped.top + y) * c + cropped.left) * 3;
            let dst = &mut out[start..start + cropped.width * 3];
            for (pixel, bytes) in dst.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
                for (channel, (v, &byte)) in pixel.iter_mut().zip(bytes).enumerate() {
                    *v = value(channel, byte);
                }
            }
        }
        out
    }
}

/// One axis of torchvision's `center_crop` of `n` pixels to `crop`: the zero padding before the
/// image (`(crop - n) // 2` when the crop is larger), the first pixel kept
/// (`round((n - crop) / 2)`, half to even, otherwise) and how many are kept.
fn crop_axis(n: usize, crop: usize) -> (usize, usize, usize) {
    if crop > n {
        ((crop - n) / 2, 0, n)
    } else {
        let first = ((n - crop) as f64 / 2.0).round_ties_even() as usize;
        (0, first, crop)
    }
}

/// torchvision's `resize` of a `uint8 [C, H, W]` tensor to `nh` x `nw`: float32, antialiased
/// interpolation, (bicubic: clamp to [0, 255]), round, back to `uint8`.
pub fn resize_uint8(
    image: &Tensor,
    nh: i64,
    nw: i64,
    interpolation: Interpolation,
) -> Result<Tensor> {
    let x = image
        .f_unsqueeze(0)?
        .f_to_dtype(Kind::Float, false, false)?;
    let y = match interpolation {
        Interpolation::Bilinear => {
            x.f_internal_upsample_bilinear2d_aa([nh, nw], false, None, None)?
        }
        Interpolation::Bicubic => x
            .f_internal_upsample_bicubic2d_aa([nh, nw], false, None, None)?
            .f_clamp(0.0, 255.0)?,
    };
    Ok(y.f_squeeze_dim(0)?
        .f_round()?
        .f_to_dtype(Kind::Uint8, false, false)?)
}

/// `convert_image_dtype` (uint8 to float32 / 255), then `normalize` (subtract `mean`, divide by
/// `std`, per channel) of a `uint8 [3, H, W]` image.
pub fn normalize(image: &Tensor, mean: [f64; 3], std: [f64; 3]) -> Result<Tensor> {
    let x = image
        .f_to_dtype(Kind::Float, false, false)?
        .f_div_scalar(255.0)?;
    let mean = channel_tensor(mean, &x)?;
    let std = channel_tensor(std, &x)?;
    Ok(x.f_sub(&mean)?.f_div(&std)?)
}

impl std::fmt::Display for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resize {} {}, crop {}, mean {:?}, std {:?}",
            self.resize, self.interpolation, self.crop, self.mean, self.std
        )
    }
}

/// torchvision's `center_crop` on `[C, H, W]`: zero-pads a side smaller than `crop` (left/top
/// get the smaller half), then takes the window at `round((H - crop) / 2)`,
/// `round((W - crop) / 2)`, rounding half to even.
pub fn center_crop(image: &Tensor, crop: i64) -> Result<Tensor> {
    let size = image.size();
    let nd = size.len();
    let (h, w) = (size[nd - 2] as usize, size[nd - 1] as usize);
    let c = crop as usize;
    let (top, y0, height) = crop_axis(h, c);
    let (left, x0, width) = crop_axis(w, c);
    let image = image
        .f_narrow(nd as i64 - 2, y0 as i64, height as i64)?
        .f_narrow(nd as i64 - 1, x0 as i64, width as i64)?;
    if (height, width) == (c, c) {
        return Ok(image);
    }
    // [left, right, top, bottom]
    let pads = [left, c - left - width, top, c - top - height].map(|p| p as i64);
    Ok(image.f_constant_pad_nd(pads)?)
}

/// `values` as a float32 `[3, 1, 1]` tensor on `like`'s device.
fn channel_tensor(values: [f64; 3], like: &Tensor) -> Result<Tensor> {
    let v: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Ok(Tensor::f_from_slice(&v)?
        .f_view([3, 1, 1])?
        .f_to_device(like.device())?)
}

/// The transform to use and where it comes from: the file's own when its name is known, else
/// the default weights' of `arch` at `width_mult`, else the architecture's reference default.
pub fn transform_for(arch: Arch, width_mult: f64, weights: Option<&Path>) -> (Transform, String) {
    if let Some(k) = weights.and_then(PublishedWeights::for_file) {
        return (k.transform, k.name.to_string());
    }
    if let Some(k) = arch.default_weights(width_mult) {
        return (k.transform, format!("{arch} default, as {}", k.name));
    }
    // No published weights at this width: the architecture's family default.
    (arch.info().transform, format!("{arch} default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_torchvision() {
        let t = Transform::torchvision(232);
        assert_eq!(t.resized_size(300, 451), (232, 348)); // int(232 * 451 / 300) = 348
        assert_eq!(t.resized_size(451, 300), (348, 232));
        assert_eq!(t.resized_size(1, 1), (232, 232));
        assert_eq!(t.resized_size(7, 300), (232, 9942));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        let x = Tensor::arange(9 * 9, (Kind::Int64, tch::Device::Cpu)).view([1, 9, 9]);
        // (9 - 4) / 2 = 2.5 rounds to 2; (9 - 6) / 2 = 1.5 rounds to 2.
        let c = center_crop(&x, 4).unwrap();
        assert_eq!(c.int64_value(&[0, 0, 0]), 2 * 9 + 2);
        let c = center_crop(&x, 6).unwrap();
        assert_eq!(c.int64_value(&[0, 0, 0]), 2 * 9 + 2);
    }

    #[test]
    fn crop_padding_puts_the_smaller_half_first() {
        // Values 1..=81, so that no pixel looks like padding.
        let x = Tensor::arange_start(1, 9 * 9 + 1, (Kind::Int64, tch::Device::Cpu)).view([1, 9, 9]);
        // 9 -> 12 pads 1 row/column before and 2 after (torchvision's `(crop - w) // 2` left):
        // the image is at [1, 10) in both axes. The other split would put it at [2, 11).
        let c = center_crop(&x, 12).unwrap();
        assert_eq!(c.size(), [1, 12, 12]);
        let row = |i: i64| Vec::<i64>::try_from(c.get(0).get(i)).unwrap();
        assert_eq!(row(0), [0; 12]);
        // An image row starting with value `v`, padded as torchvision pads it.
        let padded = |v: i64| [vec![0], (v..v + 9).collect(), vec![0, 0]].concat();
        assert_eq!(row(1), padded(1));
        assert_eq!(row(9), padded(73));
        assert_eq!(row(10), [0; 12]);
        assert_eq!(row(11), [0; 12]);
        // One axis padded (9 -> 12, offset 1), the other cropped (20 -> 12 at offset 4).
        let x =
            Tensor::arange_start(1, 9 * 20 + 1, (Kind::Int64, tch::Device::Cpu)).view([1, 9, 20]);
        let c = center_crop(&x, 12).unwrap();
        assert_eq!(c.int64_value(&[0, 0, 0]), 0);
        assert_eq!(c.int64_value(&[0, 1, 0]), 5); // x[0, 4]
        assert_eq!(c.int64_value(&[0, 9, 11]), 8 * 20 + 16); // x[8, 15]
        assert_eq!(c.int64_value(&[0, 10, 0]), 0);
    }

    #[test]
    fn presets_by_file_name_then_arch() {
        let (t, _) = transform_for(
            Arch::MobilenetV2,
            1.0,
            Some(Path::new("x/mobilenet_v2-b0353104.pth")),
        );
        assert_eq!(t.resize, 256);
        let (t, _) = transform_for(Arch::MobilenetV2, 1.0, Some(Path::new("mine.pth")));
        assert_eq!(t.resize, 232);
        let (t, _) = transform_for(Arch::MobilenetV1, 1.25, None);
        assert_eq!((t.resize, t.interpolation), (248, Interpolation::Bicubic));
        let (t, _) = transform_for(Arch::MobilenetV1, 0.5, None);
        assert_eq!(t.resize, 256);
    }
}
