//! `mobilenet classify`'s decoding and preprocessing against Pillow and torchvision.
//!
//! References: `tests/gen_classify.py --out fixtures/classify` (`make fixtures`). For every PNG
//! (the sample photos and generated images in every colour type, bit depth and odd size Pillow
//! reads) our pixels must equal `Image.open(p).convert("RGB")` exactly, and our preprocessed
//! tensor must equal torchvision's transform of those pixels as a tensor within 1e-5, with a
//! crop larger than the resized image (zero padding, split unevenly) too; the difference of this
//! tensor path to the PIL-image path is printed, and [`PilTransform`] (classify's default) must
//! equal the PIL-image path (`NAME.tv232.pil`) bit for bit.
//! For JPEGs our decoder's difference to Pillow's (libjpeg-turbo) is measured and bounded, and
//! the preprocessing of Pillow's pixels must match within 1e-5.

use mobilenet::images::{self, RgbImage};
use mobilenet::preprocess::{Interpolation, PilTransform, Transform};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

use crate::common::Failures;

const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/classify")
}

fn references() -> HashMap<String, Tensor> {
    crate::common::fixture_tensors(
        &fixtures().join("preprocess.safetensors"),
        ".venv/bin/python3 tests/gen_classify.py --out fixtures/classify",
    )
}

fn images_in(sub: &str) -> Vec<(String, PathBuf)> {
    crate::common::fixture_images(&fixtures(), sub)
}

fn preset(name: &str) -> Transform {
    match name {
        "tv232" => Transform::torchvision(232),
        "tv256" => Transform::torchvision(256),
        "timm256" => Transform::timm_inception(256),
        "timm248" => Transform::timm_inception(248),
        // Crop 224 of a 221 shorter side: zero padding, 1 before and 2 after.
        "pad221" => Transform::torchvision(221),
        _ => panic!("unknown preset {name}"),
    }
}

const PRESETS: [&str; 5] = ["tv232", "tv256", "timm256", "timm248", "pad221"];

/// Max |a - b| and a description of the worst element.
fn max_diff(a: &Tensor, b: &Tensor) -> (f64, String) {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .flatten(0, -1);
    let i = d.argmax(0, false).int64_value(&[]);
    let worst = d.double_value(&[i]);
    let (fa, fb) = (a.flatten(0, -1), b.flatten(0, -1));
    let at = format!(
        "element {i} of {:?}: ours {} reference {}",
        a.size(),
        fa.double_value(&[i]),
        fb.double_value(&[i])
    );
    (worst, at)
}

/// Pillow's pixels (uint8 [H, W, 3]) as our image type.
fn rgb_from(pixels: &Tensor) -> RgbImage {
    let size = pixels.size();
    assert_eq!(size.len(), 3);
    let data: Vec<u8> = pixels.flatten(0, -1).try_into().unwrap();
    RgbImage {
        width: size[1] as u32,
        height: size[0] as u32,
        data,
    }
}

/// Our decoding of `path` and Pillow's pixels, or `None` with the failure recorded when the
/// decoder errs or the sizes differ.
fn decode(
    f: &mut Failures,
    refs: &HashMap<String, Tensor>,
    name: &str,
    path: &Path,
) -> Option<(RgbImage, RgbImage)> {
    let ours = f.ok(name, images::decode_file(path))?;
    let pil = rgb_from(&refs[&format!("{name}.pixels")]);
    let (size, pil_size) = ((ours.width, ours.height), (pil.width, pil.height));
    let same = f.check(
        size == pil_size,
        name,
        format!("{size:?}, Pillow {pil_size:?}"),
    );
    same.then_some((ours, pil))
}

#[test]
fn png_pixels_and_preprocessing_match_torchvision() {
    let refs = references();
    let mut f = Failures::new();
    let mut report = Vec::new();
    let mut worst_overall = 0.0f64;
    for (name, path) in images_in("png") {
        let Some((ours, pil)) = decode(&mut f, &refs, &name, &path) else {
            continue;
        };
        let differing = ours
            .data
            .iter()
            .zip(&pil.data)
            .filter(|(a, b)| a != b)
            .count();
        f.check(
            differing == 0,
            &name,
            format!("{differing} bytes differ from Pillow's convert(\"RGB\")"),
        );
        let tensor = ours.to_tensor().unwrap();
        for p in PRESETS {
            let Some(reference) = refs.get(&format!("{name}.{p}")) else {
                continue;
            };
            let Some(x) = f.ok(format!("{name} {p}"), preset(p).apply(&tensor)) else {
                continue;
            };
            let (d, at) = max_diff(&x, reference);
            f.at_most(
                format!("{name} {p}: max |ours - torchvision| at {at}"),
                d,
                TOLERANCE,
            );
            worst_overall = worst_overall.max(d);
            if p == "tv232" {
                let pil_reference = &refs[&format!("{name}.tv232.pil")];
                let (pil_d, _) = max_diff(&x, pil_reference);
                let pil = PilTransform::new(preset(p)).unwrap().apply(&ours).unwrap();
                let (exact, at) = max_diff(&pil, pil_reference);
                f.at_most(
                    format!("{name} PIL path: max |ours - PIL's| at {at}"),
                    exact,
                    0.0,
                );
                report.push(format!(
                    "{name:32} {}x{}: vs torchvision tensor path {d:.1e}, vs PIL-image path {pil_d:.3}",
                    ours.width, ours.height
                ));
            }
        }
    }
    println!("PNG preprocessing (tv232 shown; every preset checked <= {TOLERANCE:e}):");
    for line in &report {
        println!("  {line}");
    }
    println!("worst difference to torchvision over all PNGs and presets: {worst_overall:e}");
    f.assert_none();
}

#[test]
fn jpeg_decoder_against_pillow() {
    let refs = references();
    let mut f = Failures::new();
    let mut lines = Vec::new();
    let mut worst_pixel = 0u8;
    for (name, path) in images_in("jpeg") {
        let Some((ours, pil)) = decode(&mut f, &refs, &name, &path) else {
            continue;
        };
        let diffs: Vec<u8> = ours
            .data
            .iter()
            .zip(&pil.data)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        let share = diffs.iter().filter(|&&d| d > 0).count() as f64 / diffs.len() as f64;
        worst_pixel = worst_pixel.max(max);
        // Two conforming decoders differ by rounding, not by content.
        f.check(
            mean < 1.0 && max <= 48,
            &name,
            format!("decoder differs from Pillow: max {max}, mean {mean:.3}"),
        );

        // Preprocessing alone, from Pillow's pixels: exact as for PNGs.
        let from_pil = pil.to_tensor().unwrap();
        let ours_tensor = ours.to_tensor().unwrap();
        for p in ["tv232", "timm256"] {
            let reference = &refs[&format!("{name}.{p}")];
            let x = preset(p).apply(&from_pil).unwrap();
            let (d, at) = max_diff(&x, reference);
            f.at_most(
                format!("{name} {p} from Pillow's pixels, at {at}"),
                d,
                TOLERANCE,
            );
        }
        let (end_to_end, _) = max_diff(
            &Transform::torchvision(232).apply(&ours_tensor).unwrap(),
            &refs[&format!("{name}.tv232")],
        );
        lines.push(format!(
            "{name:32} {}x{}: pixels max {max}, mean {mean:.3}, {:.1}% differ; tv232 tensor max diff {end_to_end:.4}",
            ours.width,
            ours.height,
            share * 100.0
        ));
    }
    println!("JPEG: our decoder (image/zune-jpeg) against Pillow (libjpeg-turbo):");
    for line in &lines {
        println!("  {line}");
    }
    println!("largest pixel difference over all JPEGs: {worst_pixel}");
    f.assert_none();
}

#[test]
fn transform_edge_cases() {
    // Already at the resize size: no resampling, only crop and normalize.
    let t = Transform::torchvision(232);
    let img = Tensor::full([3, 232, 300], 255, (Kind::Uint8, tch::Device::Cpu));
    let x = t.apply(&img).unwrap();
    assert_eq!(x.size(), [3, 224, 224]);
    let expected = (1.0 - 0.485) / 0.229;
    assert!((x.double_value(&[0, 0, 0]) - expected).abs() < 1e-6);
    // Crop larger than the resized image pads with zeros (normalized: -mean/std).
    let t = Transform { crop: 240, ..t };
    let x = t.apply(&img).unwrap();
    assert_eq!(x.size(), [3, 240, 240]);
    assert!((x.double_value(&[0, 0, 100]) - (-0.485 / 0.229)).abs() < 1e-6);
    assert!((x.double_value(&[0, 100, 100]) - expected).abs() < 1e-6);
    // Errors, not panics, on bad tensors and extreme aspect ratios.
    assert!(t
        .apply(&Tensor::zeros([3, 4], (Kind::Uint8, tch::Device::Cpu)))
        .is_err());
    assert!(t
        .apply(&Tensor::zeros([3, 4, 4], (Kind::Float, tch::Device::Cpu)))
        .is_err());
    let sliver = Tensor::zeros([3, 1, 100_000], (Kind::Uint8, tch::Device::Cpu));
    let err = t.apply(&sliver).unwrap_err().to_string();
    assert!(err.contains("aspect ratio"), "{err}");
    assert_eq!(
        Transform::timm_inception(256).interpolation,
        Interpolation::Bicubic
    );
}

#[test]
fn built_in_labels_are_torchvisions() {
    let path = fixtures().join("labels.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make fixtures`", path.display()));
    let labels: Vec<String> = serde_json::from_str(&text).unwrap();
    assert_eq!(
        labels,
        mobilenet::imagenet::labels(),
        "src/imagenet_classes.txt is stale: run tests/gen_classify.py --write-labels"
    );
}
