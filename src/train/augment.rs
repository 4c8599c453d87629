//! The per-sample transforms of training and validation, and the seeded random numbers they
//! draw.
//!
//! [`Augment::Standard`] is torchvision's `ClassificationPresetTrain` (`references/classification/
//! presets.py`) with its defaults: `RandomResizedCrop(R)` (scale 0.08 to 1, ratio 3/4 to 4/3,
//! bilinear, antialiased; `get_params` with its 10 attempts and its central-crop fallback),
//! `RandomHorizontalFlip(0.5)`, then scaling to `[0, 1]` and the mean/std normalization.
//! [`Augment::None`] resizes the shorter side to R and center-crops R (an identity on R x R
//! images). Validation uses the eval transform, [`eval_transform`].
//!
//! Randomness comes from [`Rng`], a SplitMix64 stream per (seed, epoch, sample), so that a
//! sample's crop does not depend on which worker thread prepares it nor on the files that failed
//! before it, and a resumed run draws the same numbers as an uninterrupted one. (torch's own
//! generator is not used: its streams differ between Python's DataLoader workers and ours anyway.)

use crate::preprocess::{self, Interpolation, Transform};
use crate::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// SplitMix64: a small, fast, seedable generator whose whole state is one `u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    /// Stream tags for [`Rng::derive`].
    pub const SHUFFLE: u64 = 1;
    pub const SPLIT: u64 = 2;
    pub const SAMPLE: u64 = 3;
    pub const TORCH: u64 = 4;

    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream for `seed` and the path `stream` (e.g. `[SAMPLE, epoch, index]`).
    pub fn derive(seed: u64, stream: &[u64]) -> Rng {
        let mut r = Rng(seed);
        for &s in stream {
            let x = r.next_u64();
            r = Rng(x ^ s.wrapping_mul(0xD1B5_4A32_D192_ED03));
            r.next_u64();
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `[0, n)` (`n >= 1`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let n = n.max(1);
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The training augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Augment {
    /// torchvision's `ClassificationPresetTrain`: random resized crop, horizontal flip.
    Standard,
    /// Shorter side resized to R, center crop R.
    None,
}

/// torchvision's `RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3/4, 4/3))`:
/// `(top, left, height, width)` of the crop in an `h` x `w` image.
pub fn random_resized_crop_params(h: i64, w: i64, rng: &mut Rng) -> (i64, i64, i64, i64) {
    let (scale, ratio) = ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0));
    let area = (h * w) as f64;
    let log_ratio = (f64::ln(ratio.0), f64::ln(ratio.1));
    for _ in 0..10 {
        let target_area = area * rng.range(scale.0, scale.1);
        let aspect_ratio = rng.range(log_ratio.0, log_ratio.1).exp();
        let cw = (target_area * aspect_ratio).sqrt().round() as i64;
        let ch = (target_area / aspect_ratio).sqrt().round() as i64;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as i64;
            let left = rng.below((w - cw + 1) as u64) as i64;
            return (top, left, ch, cw);
        }
    }
    // Fallback to a central crop.
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        ((w as f64 / ratio.0).round() as i64, w)
    } else if in_ratio > ratio.1 {
        (h, (h as f64 * ratio.1).round() as i64)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// The evaluation transform for training at `resolution` (torchvision's reference:
/// `resize = floor(R / 0.875)` bilinear, center crop R) with the given normalization.
pub fn eval_transform(resolution: i64, mean: [f64; 3], std: [f64; 3]) -> Transform {
    Transform {
        resize: (resolution as f64 / 0.875).floor() as i64,
        crop: resolution,
        interpolation: Interpolation::Bilinear,
        mean,
        std,
    }
}

/// How a worker prepares one decoded `uint8 [3, H, W]` image: the training augmentation with
/// its random stream, or a fixed evaluation transform.
#[derive(Debug, Clone, Copy)]
pub enum SamplePrep {
    Train {
        augment: Augment,
        resolution: i64,
        mean: [f64; 3],
        std: [f64; 3],
        seed: u64,
        epoch: u64,
    },
    Eval(Transform),
}

impl SamplePrep {
    /// The prepared `float32 [3, R, R]` image of sample `index`.
    pub fn apply(&self, image: &Tensor, index: usize) -> Result<Tensor> {
        match *self {
            SamplePrep::Eval(t) => t.apply(image),
            SamplePrep::Train {
                augment: Augment::None,
                resolution,
                mean,
                std,
                ..
            } => Transform {
                resize: resolution,
                crop: resolution,
                interpolation: Interpolation::Bilinear,
                mean,
                std,
            }
            .apply(image),
            SamplePrep::Train {
                augment: Augment::Standard,
                resolution,
                mean,
                std,
                seed,
                epoch,
            } => {
                let mut rng = Rng::derive(seed, &[Rng::SAMPLE, epoch, index as u64]);
                let size = image.size();
                let (h, w) = (size[1], size[2]);
                let (top, left, ch, cw) = random_resized_crop_params(h, w, &mut rng);
                let crop = image.f_narrow(1, top, ch)?.f_narrow(2, left, cw)?;
                let resized = if (ch, cw) == (resolution, resolution) {
                    crop
                } else {
                    preprocess::resize_uint8(
                        &crop,
                        resolution,
                        resolution,
                        Interpolation::Bilinear,
                    )?
                };
                let flipped = if rng.uniform() < 0.5 {
                    resized.f_flip([2])?
                } else {
                    resized
                };
                preprocess::normalize(&flipped, mean, std)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::derive(7, &[1, 2]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::derive(7, &[1, 2]).next_u64(),
            Rng::derive(7, &[1, 3]).next_u64()
        );
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(3) < 3));
        let mut v: Vec<u32> = (0..50).collect();
        Rng::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn crops_stay_inside_the_image() {
        let mut rng = Rng::new(11);
        for (h, w) in [(32, 32), (10, 300), (300, 10), (1, 1), (224, 180)] {
            for _ in 0..200 {
                let (top, left, ch, cw) = random_resized_crop_params(h, w, &mut rng);
                assert!(ch >= 1 && cw >= 1 && top >= 0 && left >= 0, "{h}x{w}");
                assert!(
                    top + ch <= h && left + cw <= w,
                    "{h}x{w}: {top} {left} {ch} {cw}"
                );
            }
        }
        // An extreme aspect ratio falls back to the central crop of ratio 4/3 or 3/4.
        let mut rng = Rng::new(1);
        assert_eq!(
            random_resized_crop_params(10, 300, &mut rng),
            (0, 143, 10, 13)
        );
    }
}
