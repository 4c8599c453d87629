//! `mobilenet classify` streams: its peak memory does not grow with the number of inputs.
//!
//! Runs the binary over 40 and over 400 generated 256x192 PNGs (batch size 8, so both runs are
//! in the steady state) and compares the peak resident set sizes it reports (`VmHWM`, hidden
//! flag `--report-peak-rss`). Loading every image first would add about 60 MB of decoded pixels
//! and 240 MB of preprocessed tensors for the larger run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::BIN;

fn write_images(dir: &Path, n: usize) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(256, 192, |x, y| {
            let v = (x * 7 + y * 13 + i as u32 * 31) as u8;
            image::Rgb([v, v.wrapping_mul(3) ^ (i as u8), (x ^ y) as u8])
        });
        img.save(dir.join(format!("img_{i:04}.png"))).unwrap();
    }
}

/// Runs classify over `dir`; returns (number of JSON lines, peak RSS in KiB).
fn run(dir: &Path, weights: &Path) -> (usize, u64) {
    let out = Command::new(BIN)
        .args([
            "classify",
            "--json",
            "--device",
            "cpu",
            "--batch-size",
            "8",
            "--report-peak-rss",
        ])
        .arg("--weights")
        .arg(weights)
        .arg(dir)
        .output()
        .expect("run mobilenet classify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    let peak = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_kib in stderr: {stderr}"));
    (lines, peak)
}

#[test]
fn peak_memory_is_bounded() {
    if !Path::new("/proc/self/status").exists() {
        println!("skipped: no /proc (VmHWM is Linux-only)");
        return;
    }
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/classify/mobilenet_v2-seeded.pth");
    assert!(
        weights.is_file(),
        "{} is missing: run `make fixtures`",
        weights.display()
    );
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("classify_memory");
    let (few, many) = (root.join("few"), root.join("many"));
    write_images(&few, 40);
    write_images(&many, 400);
    let (n_few, peak_few) = run(&few, &weights);
    let (n_many, peak_many) = run(&many, &weights);
    assert_eq!((n_few, n_many), (40, 400));
    println!(
        "peak RSS: {} MiB for 40 images, {} MiB for 400 images (batch size 8)",
        peak_few / 1024,
        peak_many / 1024
    );
    assert!(
        peak_many < peak_few + 64 * 1024,
        "peak memory grows with the number of inputs: {peak_few} KiB for 40, {peak_many} KiB for 400"
    );
    assert!(
        peak_many < 1536 * 1024,
        "peak RSS {peak_many} KiB is over 1.5 GiB"
    );
}
