//! Time per image of classify's PIL-path preprocessing stages on one thread: Pillow's resampler
//! ported ([`mobilenet::preprocess::resample`]) on the whole image, the center-crop window alone
//! as classify runs it, and the normalization to floats; the decode for scale.
//!
//!   cargo run --release --example resize_bench -- IMAGE [ITERATIONS]
//!
//! Compare with Pillow's `img.resize` (scripts/classify_compare.py prints it).

use mobilenet::images;
use mobilenet::preprocess::{resample, PilTransform, Transform};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

/// The best of 5 rounds of `n` calls of `f`, in ms per call.
fn time_ms(n: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_secs_f64() * 1e3 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().unwrap_or_else(|| {
        eprintln!("usage: resize_bench IMAGE [ITERATIONS]");
        std::process::exit(2)
    }));
    let n: usize = args.next().map_or(Ok(50), |s| s.parse())?;
    let image = images::decode_file(&path)?;
    let transform = Transform::torchvision(232);
    let pil = PilTransform::new(transform)?;
    let (w, h) = (image.width as usize, image.height as usize);
    let (nh, nw) = transform.resized_size(h as i64, w as i64);
    let size = (nw as usize, nh as usize);
    let filter = transform.interpolation;
    let full = time_ms(n, || {
        black_box(resample::resize(&image.data, (w, h), size, filter));
    });
    let window = time_ms(n, || {
        black_box(pil.resize_crop(&image).expect("resize"));
    });
    let cropped = pil.resize_crop(&image)?;
    let floats = time_ms(n, || {
        black_box(pil.to_floats(&cropped));
    });
    let bytes = std::fs::read(&path)?;
    let decode = time_ms(n, || {
        black_box(images::decode(&bytes).expect("decode"));
    });
    println!(
        "{}: {w}x{h}, one thread, ms per image (best of 5 x {n}): resize to {nw}x{nh} \
         (bilinear, whole image) {full:.3}; resize of the 224x224 crop window {window:.3}; \
         normalize to floats {floats:.3}; decode {decode:.3}",
        path.display()
    );
    Ok(())
}
