//! JPEG decoding against Pillow (issue 15): for every file of `tests/gen_decode.py --out
//! fixtures/decode` (baseline and progressive, 4:2:0, 4:2:2, 4:4:4, grayscale, Adobe CMYK, odd
//! sizes, junk before a marker, a corrupt scan byte) our pixels equal
//! `Image.open(p).convert("RGB")` exactly, and `decode_draft` equals
//! `im.draft("RGB", size); im.convert("RGB")` exactly; the files Pillow refuses as truncated
//! (cut at 10%, 50%, 90% or before the end-of-image marker) are refused with its message, by
//! `mobilenet classify` too, with the good file beside them classified.
//!
//! `MOBILENET_DECODE_FIXTURES` overrides the folder (default `fixtures/decode`).

use mobilenet::images::{self, RgbImage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

use crate::common::{Failures, BIN};

fn fixtures() -> PathBuf {
    match std::env::var_os("MOBILENET_DECODE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/decode"),
    }
}

/// `expected.json`: per file, whether Pillow decodes it, its error otherwise, and the draft
/// sizes asked of it.
fn expected() -> serde_json::Map<String, serde_json::Value> {
    let path = fixtures().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `make fixtures` (or `.venv/bin/python3 tests/gen_decode.py --out \
             fixtures/decode`)",
            path.display()
        )
    });
    match serde_json::from_str(&text).unwrap() {
        serde_json::Value::Object(map) => map,
        other => panic!("{}: not an object: {other}", path.display()),
    }
}

fn references() -> HashMap<String, Tensor> {
    let path = fixtures().join("pixels.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make fixtures`", path.display()))
        .into_iter()
        .collect()
}

/// Records a failure unless `ours` has Pillow's size and every byte of `pixels` (uint8
/// [H, W, 3]); the message gives the differing bytes and the largest difference.
fn check_pixels(f: &mut Failures, what: &str, ours: &RgbImage, pixels: &Tensor) {
    let size = pixels.size();
    let (w, h) = (size[1] as u32, size[0] as u32);
    if !f.check(
        (ours.width, ours.height) == (w, h),
        what,
        format!("{}x{}, Pillow {w}x{h}", ours.width, ours.height),
    ) {
        return;
    }
    let theirs: Vec<u8> = pixels.flatten(0, -1).try_into().unwrap();
    let (differing, worst) = ours
        .data
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| a.abs_diff(b))
        .filter(|&d| d > 0)
        .fold((0usize, 0u8), |(n, m), d| (n + 1, m.max(d)));
    f.check(
        differing == 0,
        what,
        format!(
            "{differing} of {} bytes differ from Pillow's, by up to {worst}",
            theirs.len()
        ),
    );
}

#[test]
fn jpegs_decode_as_pillow() {
    let (expected, refs) = (expected(), references());
    let mut f = Failures::new();
    let (mut decoded, mut refused, mut drafts) = (0, 0, 0);
    for (name, want) in &expected {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let ours = images::decode(&bytes);
        if want["ok"] != true {
            let pillow = want["error"].as_str().unwrap_or_default();
            refused += 1;
            match ours {
                Ok(_) => {
                    f.check(false, name, format!("decoded; Pillow: {pillow}"));
                }
                Err(e) if pillow.contains("image file is truncated") => {
                    f.check(e.contains("image file is truncated"), name, &e);
                }
                Err(_) => {}
            }
            continue;
        }
        let Some(ours) = f.ok(name, ours) else {
            continue;
        };
        decoded += 1;
        check_pixels(&mut f, name, &ours, &refs[&format!("{name}.pixels")]);
        for size in want["drafts"].as_array().unwrap() {
            let (w, h) = (size[0].as_u64().unwrap(), size[1].as_u64().unwrap());
            let what = format!("{name} draft {w}x{h}");
            let Some(ours) = f.ok(&what, images::decode_draft(&bytes, w as u32, h as u32)) else {
                continue;
            };
            drafts += 1;
            check_pixels(&mut f, &what, &ours, &refs[&format!("{name}.draft{w}x{h}")]);
        }
    }
    println!("{decoded} JPEGs and {drafts} drafts equal Pillow's; {refused} refused as Pillow");
    assert!(
        decoded >= 15 && refused >= 8 && drafts >= 8,
        "too few fixtures"
    );
    f.assert_none();
}

/// `classify --json` over a folder of the truncated files and one whole JPEG: a non-zero exit,
/// each truncated file's record says "image file is truncated", and the whole one is classified.
#[test]
fn truncated_jpegs_are_reported_by_classify() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("decode_pil_truncated");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let truncated: Vec<String> = expected()
        .into_iter()
        .filter(|(_, want)| {
            want["error"]
                .as_str()
                .is_some_and(|e| e.contains("image file is truncated"))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(truncated.len() >= 8, "truncated fixtures: {truncated:?}");
    for name in truncated.iter().chain([&"chelsea_420.jpg".to_string()]) {
        std::fs::copy(fixtures().join(name), dir.join(name)).unwrap();
    }
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/classify/mobilenet_v2-seeded.pth");
    assert!(
        weights.is_file(),
        "{}: run `make fixtures`",
        weights.display()
    );
    let out = Command::new(BIN)
        .args(["classify", "--json", "--device", "cpu", "--workers", "2"])
        .arg("--weights")
        .arg(&weights)
        .arg(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let records: HashMap<String, serde_json::Value> = stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let path = Path::new(v["path"].as_str().unwrap());
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, v)
        })
        .collect();
    for name in &truncated {
        let error = records[name]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("image file is truncated"),
            "{name}: {:?}\nstderr: {stderr}",
            records[name]
        );
    }
    let good = &records["chelsea_420.jpg"];
    assert!(
        good["top"].as_array().is_some_and(|t| !t.is_empty()),
        "chelsea_420.jpg was not classified: {good}"
    );
}

/// A JPEG of only headers: SOI, a baseline SOF (`precision`, `height`, `width`, `components`,
/// no subsampling), a SOS and EOI; no tables and no scan data.
fn headers_only(width: u16, height: u16, components: u8, precision: u8) -> Vec<u8> {
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0];
    jpeg.extend((8 + 3 * u16::from(components)).to_be_bytes());
    jpeg.push(precision);
    jpeg.extend(height.to_be_bytes());
    jpeg.extend(width.to_be_bytes());
    jpeg.push(components);
    for c in 1..=components {
        jpeg.extend([c, 0x11, 0]);
    }
    jpeg.extend([0xFF, 0xDA]);
    jpeg.extend((6 + 2 * u16::from(components)).to_be_bytes());
    jpeg.push(components);
    for c in 1..=components {
        jpeg.extend([c, 0]);
    }
    jpeg.extend([0, 63, 0, 0xFF, 0xD9]);
    jpeg
}

/// Headers Pillow refuses are refused before anything is decoded or allocated: more pixels than
/// the decompression-bomb limit, 12-bit samples, 2 components; a file cut inside its headers is
/// truncated; missing tables are libjpeg's error, as a message.
#[test]
fn bad_jpeg_headers_are_errors() {
    let error = |bytes: &[u8]| images::decode(bytes).unwrap_err();
    let bomb = error(&headers_only(60000, 60000, 3, 8));
    assert!(
        bomb.contains("60000x60000") && bomb.contains("178956970"),
        "{bomb}"
    );
    let draft = images::decode_draft(&headers_only(60000, 60000, 3, 8), 224, 224).unwrap_err();
    assert!(draft.contains("178956970"), "{draft}");
    assert_eq!(
        error(&headers_only(16, 16, 3, 12)),
        "cannot handle 12-bit layers"
    );
    assert_eq!(
        error(&headers_only(16, 16, 2, 8)),
        "cannot handle 2-layer images"
    );
    let whole = headers_only(16, 16, 3, 8);
    for cut in [3, 10, 20, whole.len() - 12] {
        let e = error(&whole[..cut]);
        assert_eq!(e, "image file is truncated", "cut at {cut}");
    }
    let tables = error(&whole);
    assert!(tables.starts_with("cannot decode JPEG: "), "{tables}");
}
