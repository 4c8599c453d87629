//! Pillow's resampling of 8-bit images, `Image.resize(size, resample)` without `box` or
//! `reducing_gap` (Pillow 12.0.0, `src/libImaging/Resample.c`), on interleaved RGB.
//!
//! The same arithmetic as Pillow, so the same bytes: filter weights in `f64` per output pixel
//! (`precompute_coeffs`: support scaled by the downscale factor, bounds rounded as Pillow, weights
//! divided by their sum), then fixed point with 22 fractional bits rounded half away from zero
//! (`normalize_coeffs_8bpc`); a horizontal pass over the source rows the vertical pass needs, with
//! the sum started at one half and clipped to `0..=255`, then the vertical pass on those `uint8`
//! rows (`ImagingResampleInner`). A pass whose size does not change is skipped, as in Pillow.
//!
//! Every output pixel depends only on its own row's and column's coefficients, so
//! [`resize_window`] computes a window of the resized image (e.g. the center crop) without the
//! rest: the bytes are those of the full resize, cropped.

use super::Interpolation;
use std::ops::Range;

/// Fractional bits of the fixed-point weights (`PRECISION_BITS`, `32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// The accumulator's start: one half, so that the final shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `bilinear_filter` (support 1).
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// `bicubic_filter` with `a = -0.5` (support 2), in Pillow's order of operations.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point weights of one axis: output pixel `i` reads `len` source pixels from
/// `start`, weighted by `weights[i * ksize..][..len]`.
struct Coeffs {
    starts: Vec<usize>,
    lens: Vec<usize>,
    ksize: usize,
    weights: Vec<i32>,
}

impl Coeffs {
    /// `precompute_coeffs(in_size, 0, in_size, out_size)` then `normalize_coeffs_8bpc`.
    fn new(in_size: usize, out_size: usize, interpolation: Interpolation) -> Coeffs {
        let (filter, support): (fn(f64) -> f64, f64) = match interpolation {
            Interpolation::Bilinear => (bilinear, 1.0),
            Interpolation::Bicubic => (bicubic, 2.0),
        };
        // `(double)(in1 - in0) / outSize`, the box being floats.
        let scale = (in_size as f32) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut coeffs = Coeffs {
            starts: Vec::with_capacity(out_size),
            lens: Vec::with_capacity(out_size),
            ksize,
            weights: vec![0; out_size * ksize],
        };
        let mut k = vec![0.0f64; ksize];
        for (xx, weights) in coeffs.weights.chunks_exact_mut(ksize).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let len = xmax.max(0) as usize;
            let mut ww = 0.0;
            for (x, w) in k[..len].iter_mut().enumerate() {
                *w = filter(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
                ww += *w;
            }
            for (w, fixed) in k[..len].iter_mut().zip(weights.iter_mut()) {
                if ww != 0.0 {
                    *w /= ww;
                }
                let scaled = *w * (1u32 << PRECISION_BITS) as f64;
                *fixed = if *w < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            coeffs.starts.push(xmin as usize);
            coeffs.lens.push(len);
        }
        coeffs
    }

    /// Output pixel `i`'s first source pixel and its weights.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        (
            self.starts[i],
            &self.weights[i * self.ksize..][..self.lens[i]],
        )
    }

    /// The source range that output pixels `out` read.
    fn source_range(&self, out: &Range<usize>) -> Range<usize> {
        if out.is_empty() {
            return 0..0;
        }
        let last = out.end - 1;
        self.starts[out.start]..self.starts[last] + self.lens[last]
    }
}

/// `clip8`: the accumulator shifted back to 8 bits, clamped to `0..=255`.
#[inline(always)]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A window of the resized image: rows `rows` and columns `cols` of the `out_w` x `out_h` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

/// Pillow's `Image.resize((out_w, out_h), resample)` of the interleaved RGB image `src`
/// (`h` rows of `w` pixels, `[H, W, 3]` bytes), restricted to `window`: returns the window's
/// `rows.len() x cols.len() x 3` bytes, equal to those of the full resize. `window` must lie
/// within the output and the sizes must be at least 1 (the caller checks).
pub fn resize_window(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    window: &Window,
    interpolation: Interpolation,
) -> Vec<u8> {
    assert_eq!(src.len(), w * h * 3, "resize_window: {w}x{h} RGB");
    assert!(window.rows.end <= out_h && window.cols.end <= out_w);
    let job = Job {
        src,
        size: (w, h),
        out: (out_w, out_h),
        window,
        interpolation,
    };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { resize_window_avx2(&job) };
    }
    resize_passes(&job)
}

/// The arguments of [`resize_window`].
struct Job<'a> {
    src: &'a [u8],
    size: (usize, usize),
    out: (usize, usize),
    window: &'a Window,
    interpolation: Interpolation,
}

/// [`resize_passes`] compiled for AVX2: the 32-bit multiply-adds of both passes vectorize
/// (baseline x86-64 has no packed 32-bit multiply). The same integer arithmetic, so the same
/// bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resize_window_avx2(job: &Job) -> Vec<u8> {
    resize_passes(job)
}

/// [`resize_window`]'s work: the passes Pillow's `ImagingResampleInner` runs.
#[inline(always)]
fn resize_passes(job: &Job) -> Vec<u8> {
    let Job {
        src,
        size: (w, h),
        out: (out_w, out_h),
        window,
        interpolation,
    } = *job;
    let need_horizontal = out_w != w;
    let need_vertical = out_h != h;
    let vertical = need_vertical.then(|| Coeffs::new(h, out_h, interpolation));
    // The source rows the vertical pass reads (the window's own rows without one).
    let src_rows = match &vertical {
        Some(v) => v.source_range(&window.rows),
        None => window.rows.clone(),
    };
    let (rows, row_width) = if need_horizontal {
        let horizontal = Coeffs::new(w, out_w, interpolation);
        let rows = horizontal_pass(src, w, src_rows.clone(), &horizontal, &window.cols);
        (rows, window.cols.len())
    } else {
        // Only the window's columns of the source rows.
        let mut rows = Vec::with_capacity(src_rows.len() * window.cols.len() * 3);
        for y in src_rows.clone() {
            rows.extend_from_slice(
                &src[(y * w + window.cols.start) * 3..(y * w + window.cols.end) * 3],
            );
        }
        (rows, window.cols.len())
    };
    match vertical {
        Some(v) => vertical_pass(&rows, row_width, src_rows.start, &v, &window.rows),
        None => rows,
    }
}

/// Pillow's `Image.resize` of a whole RGB image: `out_h x out_w x 3` bytes.
pub fn resize(
    src: &[u8],
    size: (usize, usize),
    out: (usize, usize),
    interpolation: Interpolation,
) -> Vec<u8> {
    let window = Window {
        rows: 0..out.1,
        cols: 0..out.0,
    };
    resize_window(src, size, out, &window, interpolation)
}

/// `ImagingResampleHorizontal_8bpc` on source rows `rows`, output columns `cols` only.
#[inline(always)]
fn horizontal_pass(
    src: &[u8],
    w: usize,
    rows: Range<usize>,
    coeffs: &Coeffs,
    cols: &Range<usize>,
) -> Vec<u8> {
    let out_w = cols.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (line_out, y) in out.chunks_exact_mut(out_w * 3).zip(rows) {
        let line_in = &src[y * w * 3..(y + 1) * w * 3];
        for (pixel, xx) in line_out.chunks_exact_mut(3).zip(cols.clone()) {
            let (start, k) = coeffs.taps(xx);
            let taps = &line_in[start * 3..(start + k.len()) * 3];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &k) in taps.chunks_exact(3).zip(k) {
                s0 = s0.wrapping_add((p[0] as i32).wrapping_mul(k));
                s1 = s1.wrapping_add((p[1] as i32).wrapping_mul(k));
                s2 = s2.wrapping_add((p[2] as i32).wrapping_mul(k));
            }
            pixel.copy_from_slice(&[clip8(s0), clip8(s1), clip8(s2)]);
        }
    }
    out
}

/// `ImagingResampleVertical_8bpc` for output rows `rows`, reading `src` (rows of `width` RGB
/// pixels, the first being source row `first_row`). Row by row: each tap adds a whole source
/// row to the accumulators (integer sums, so the order does not change them).
#[inline(always)]
fn vertical_pass(
    src: &[u8],
    width: usize,
    first_row: usize,
    coeffs: &Coeffs,
    rows: &Range<usize>,
) -> Vec<u8> {
    let line = width * 3;
    let mut out = vec![0u8; rows.len() * line];
    let mut sums = vec![HALF; line];
    for (line_out, yy) in out.chunks_exact_mut(line.max(1)).zip(rows.clone()) {
        let (start, k) = coeffs.taps(yy);
        sums.fill(HALF);
        for (i, &k) in k.iter().enumerate() {
            let row = start + i - first_row;
            let line_in = &src[row * line..(row + 1) * line];
            for (s, &p) in sums.iter_mut().zip(line_in) {
                *s = s.wrapping_add((p as i32).wrapping_mul(k));
            }
        }
        for (o, &s) in line_out.iter_mut().zip(&sums) {
            *o = clip8(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (n, m) in [(500, 232), (375, 232), (7, 232), (233, 232), (1, 9)] {
            for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
                let c = Coeffs::new(n, m, interpolation);
                for i in 0..m {
                    let sum: i64 = c.taps(i).1.iter().map(|&k| k as i64).sum();
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= 8,
                        "{n}->{m} {i}: {sum}"
                    );
                }
            }
        }
    }

    #[test]
    fn window_equals_cropped_full_resize() {
        let (w, h) = (37, 23);
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 7919 % 251) as u8).collect();
        for (ow, oh) in [(17, 11), (50, 23), (37, 40), (60, 9)] {
            for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
                let full = resize(&src, (w, h), (ow, oh), interpolation);
                let window = Window {
                    rows: 2..oh - 1,
                    cols: 3..ow - 2,
                };
                let part = resize_window(&src, (w, h), (ow, oh), &window, interpolation);
                let expected: Vec<u8> = window
                    .rows
                    .clone()
                    .flat_map(|y| full[(y * ow + 3) * 3..(y * ow + ow - 2) * 3].to_vec())
                    .collect();
                assert_eq!(part, expected, "{ow}x{oh} {interpolation}");
            }
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| i as u8).collect();
        assert_eq!(resize(&src, (5, 4), (5, 4), Interpolation::Bicubic), src);
    }
}
