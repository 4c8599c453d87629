//! Decode speed of JPEG files: `images::decode` (libjpeg-turbo with Pillow's settings), its
//! `decode_draft` to a given size, and zune-jpeg 0.5 as the `image` crate called it (the decoder
//! before issue 15), in milliseconds per decode on one thread.
//!
//! `cargo run --release --example decode_speed -- [--iters N] [--draft WxH] FILE...`

use std::time::Instant;

/// Milliseconds per call of `f`, the best of 3 rounds of `iters` calls.
fn ms_per(iters: u32, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_secs_f64() * 1e3 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut iters, mut draft, mut files) = (20u32, (224u32, 224u32), Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).expect("--iters N"),
            "--draft" => {
                let v = args.next().expect("--draft WxH");
                let (w, h) = v.split_once('x').expect("--draft WxH");
                draft = (w.parse().expect("width"), h.parse().expect("height"));
            }
            _ => files.push(arg),
        }
    }
    if files.is_empty() {
        eprintln!("usage: decode_speed [--iters N] [--draft WxH] FILE...");
        std::process::exit(2);
    }
    println!(
        "file\tsize\tlibjpeg-turbo ms\tdraft {}x{} ms\tzune-jpeg ms",
        draft.0, draft.1
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let image = mobilenet::images::decode(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        let ours = ms_per(iters, || {
            mobilenet::images::decode(&bytes).unwrap();
        });
        let drafted = ms_per(iters, || {
            mobilenet::images::decode_draft(&bytes, draft.0, draft.1).unwrap();
        });
        let zune = ms_per(iters, || {
            let options = zune_core::options::DecoderOptions::default()
                .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB)
                .set_strict_mode(false);
            let cursor = zune_core::bytestream::ZCursor::new(bytes.as_slice());
            zune_jpeg::JpegDecoder::new_with_options(cursor, options)
                .decode()
                .unwrap();
        });
        println!(
            "{file}\t{}x{}\t{ours:.2}\t{drafted:.2}\t{zune:.2}",
            image.width, image.height
        );
    }
}
