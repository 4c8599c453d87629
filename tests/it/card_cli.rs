//! What `mobilenet train --out DIR` leaves, read back by the other commands: `classify --weights
//! DIR/model.pth` takes the architecture, norm, class count, transform and labels from the model
//! card beside the weights (`src/card.rs`), a bad card or class list is an error naming its file,
//! a file without a card with another class count is labelled `class N`; `convert` writes a `.pth`
//! that torchvision loads strictly.

use crate::common::{model_fixture, output_ok, BIN};
use mobilenet::card::{write_json, ModelCard, CLASSES, MODEL_CARD};
use mobilenet::models::{Arch, ModelConfig};
use mobilenet::preprocess::Transform;
use mobilenet::weights;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("card-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/classify/png")
        .join(name)
}

/// `classify --device cpu ARGS WEIGHTS chelsea.png coffee.png`.
fn classify(weights: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(["classify", "--device", "cpu", "--weights"])
        .arg(weights)
        .args(args)
        .arg(image("chelsea.png"))
        .arg(image("coffee.png"))
        .output()
        .expect("run mobilenet classify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "classify panicked: {stderr}");
    out
}

/// The `(index, label, probability)` of each image's top classes, from `--json` output.
fn tops(out: &Output) -> Vec<Vec<(i64, String, f64)>> {
    assert!(
        out.status.success(),
        "classify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            let top = record["top"].as_array().unwrap_or_else(|| panic!("{line}"));
            top.iter()
                .map(|c| {
                    let label = c["label"].as_str().unwrap_or_else(|| panic!("{line}"));
                    let p = c["probability"].as_f64().unwrap();
                    (c["index"].as_i64().unwrap(), label.to_string(), p)
                })
                .collect()
        })
        .collect()
}

/// The fixture MobileNetV2 width 0.5 cut down to a 10-class head, as `model.pth` in `dir`.
fn ten_class_v2(dir: &Path) -> PathBuf {
    let sd = weights::read(&model_fixture("v2_050.safetensors")).unwrap();
    let tensors: Vec<_> = sd
        .tensors
        .iter()
        .map(|(key, t)| match key.starts_with("classifier.1.") {
            true => (key.clone(), t.narrow(0, 0, 10).contiguous()),
            false => (key.clone(), t.shallow_clone()),
        })
        .collect();
    let path = dir.join("model.pth");
    weights::write_pth(&path, &tensors).unwrap();
    path
}

/// The card of the 10-class model, evaluated at crop 64 (resize 72).
fn ten_class_card() -> ModelCard {
    let config = ModelConfig {
        width_mult: 0.5,
        num_classes: 10,
        ..ModelConfig::new(Arch::MobilenetV2)
    };
    let transform = Transform {
        crop: 64,
        ..Transform::torchvision(72)
    };
    ModelCard::new(&config, transform)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("kind {i}")).collect()
}

#[test]
fn without_a_card_other_class_counts_are_numbered() {
    let dir = scratch("no-card");
    let weights = ten_class_v2(&dir);
    let got = tops(&classify(&weights, &["--json", "--top-k", "20"]));
    assert_eq!(got.len(), 2);
    for top in &got {
        // The class count is the file's: 10, not ImageNet's 1000.
        assert_eq!(top.len(), 10);
        for (index, label, _) in top {
            assert_eq!(label, &format!("class {index}"));
        }
    }
    let table = classify(&weights, &["--top-k", "2"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("%  class "),
        "{text}"
    );
}

#[test]
fn classify_takes_model_transform_and_labels_from_the_card() {
    let dir = scratch("card");
    let weights = ten_class_v2(&dir);
    let plain = scratch("card-plain");
    let plain_weights = ten_class_v2(&plain);
    ten_class_card().write(&dir, &names(10)).unwrap();

    let with_card = tops(&classify(&weights, &["--json", "--top-k", "3"]));
    // The card's transform (resize 72, crop 64): as the same file without a card, given those
    // sizes.
    let flags = ["--json", "--top-k", "3", "--resize", "72", "--crop", "64"];
    let without = tops(&classify(&plain_weights, &flags));
    assert_eq!(with_card.len(), 2);
    for (card_top, plain_top) in with_card.iter().zip(&without) {
        for ((i, label, p), (j, _, q)) in card_top.iter().zip(plain_top) {
            assert_eq!((i, p), (j, q));
            assert_eq!(label, &format!("kind {i}"), "classes.json's label");
        }
    }
    // --crop still overrides the card.
    let cropped = tops(&classify(&weights, &["--json", "--crop", "96"]));
    let flags = ["--json", "--resize", "72", "--crop", "96"];
    let plain_cropped = tops(&classify(&plain_weights, &flags));
    let probabilities = |tops: &[Vec<(i64, String, f64)>]| -> Vec<f64> {
        tops.iter().flatten().map(|c| c.2).collect()
    };
    assert_eq!(probabilities(&cropped), probabilities(&plain_cropped));
    assert_ne!(probabilities(&cropped), probabilities(&with_card));

    // An --arch that agrees is fine; one that contradicts the card is an error saying what the
    // card says.
    tops(&classify(&weights, &["--json", "--arch", "mobilenet_v2"]));
    let out = classify(&weights, &["--arch", "mobilenet_v3_small"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let card = dir.join(MODEL_CARD);
    assert!(
        err.contains(&format!(
            "{}: the model card says mobilenet_v2, not mobilenet_v3_small",
            card.display()
        )),
        "{err}"
    );

    // Without classes.json: `class N`.
    std::fs::remove_file(dir.join(CLASSES)).unwrap();
    for (index, label, _) in tops(&classify(&weights, &["--json"])).concat() {
        assert_eq!(label, format!("class {index}"));
    }
}

#[test]
fn classify_builds_the_cards_norm() {
    // A GroupNorm model: without its card, classify builds BatchNorm, which does not fit.
    let dir = scratch("norm");
    let weights = dir.join("model.pth");
    output_ok(
        Command::new(BIN)
            .arg("convert")
            .arg(model_fixture("v2_group8.safetensors"))
            .arg(&weights),
    );
    let out = classify(&weights, &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    let config = ModelConfig {
        norm: "group:8".parse().unwrap(),
        ..ModelConfig::new(Arch::MobilenetV2)
    };
    let card = ModelCard::new(&config, Transform::torchvision(232));
    write_json(&dir.join(MODEL_CARD), &card).unwrap();
    let got = tops(&classify(&weights, &["--json"]));
    assert_eq!(got.len(), 2);
    // A card with no classes.json: numbered, even with 1000 classes.
    assert_eq!(got[0][0].1, format!("class {}", got[0][0].0));
}

#[test]
fn bad_cards_and_class_lists_are_errors_naming_the_file() {
    let dir = scratch("bad");
    let weights = ten_class_v2(&dir);
    let card = dir.join(MODEL_CARD);
    let classes = dir.join(CLASSES);
    let error = |args: &[&str]| -> String {
        let out = classify(&weights, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(out.stdout.is_empty(), "{err}");
        err
    };

    std::fs::write(&card, "{\"arch\": ").unwrap();
    let err = error(&["--json"]);
    let want = format!(
        "error: {}: not valid JSON: EOF while parsing",
        card.display()
    );
    assert!(err.contains(&want), "{err}");

    let mut value = serde_json::to_value(ten_class_card()).unwrap();
    value["arch"] = "mobilenet_v9".into();
    write_json(&card, &value).unwrap();
    let err = error(&[]);
    let want = "invalid arch: unknown architecture \"mobilenet_v9\"";
    assert!(
        err.contains(&format!("{}: {want}", card.display())),
        "{err}"
    );

    // A class list of the wrong length.
    ten_class_card().write(&dir, &names(10)).unwrap();
    write_json(&classes, &names(9)).unwrap();
    let err = error(&["--json"]);
    let want = format!(
        "error: {}: 9 class names, but the model has 10 classes",
        classes.display()
    );
    assert!(err.contains(&want), "{err}");

    // A card that does not fit the weights: the loader's error, naming the file.
    let mut value = serde_json::to_value(ten_class_card()).unwrap();
    value["num_classes"] = 1000.into();
    write_json(&card, &value).unwrap();
    std::fs::remove_file(&classes).unwrap();
    let err = error(&[]);
    assert!(
        err.contains(&format!(
            "the weights do not fit mobilenet_v2 width 0.5 with 1000 classes (as {} says)",
            card.display()
        )) && err.contains(&weights.display().to_string()),
        "{err}"
    );
}

/// `convert` to `.pth`: a torch zip that torchvision's model loads strictly
/// (`load_state_dict(torch.load(p, weights_only=True))`), every tensor equal to the input's.
#[test]
fn convert_writes_pth_that_torchvision_loads() {
    let dir = scratch("convert");
    let input = model_fixture("v2_050.safetensors");
    let output = dir.join("v2_050.pth");
    output_ok(
        Command::new(BIN)
            .arg("convert")
            .arg(&input)
            .arg(&output)
            .args(["--arch", "mobilenet_v2", "--width-mult", "0.5"]),
    );
    let script = r#"
import sys, torch, torchvision
from safetensors.torch import load_file
p, want = sys.argv[1:]
sd = torch.load(p, weights_only=True)
m = torchvision.models.mobilenet_v2(width_mult=0.5)
m.load_state_dict(sd)
want = load_file(want)
assert set(sd) == set(want), "keys"
for k, t in want.items():
    assert torch.equal(sd[k], t), k
print("ok")
"#;
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end() == "ok",
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
