//! `mobilenet parity` on odd references: a clear error and exit 2 for a malformed one, FAIL
//! (exit 1) for logits off by more than the tolerance or NaN running statistics, never a panic;
//! and `classify` skips a FIFO.

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

use crate::common::{model_fixture as fixture, BIN};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `parity --mode MODE` of the V2 fixture against `reference`; (exit code, output).
fn parity(reference: &Path, mode: &str, precision: &str) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args([
            "parity",
            "--arch",
            "mobilenet_v2",
            "--device",
            "cpu",
            "--mode",
            mode,
        ])
        .args(["--precision", precision, "--weights"])
        .arg(fixture("v2_100.safetensors"))
        .arg("--reference")
        .arg(reference)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code(), text)
}

/// The eval reference with `edit` applied, written to a scratch file.
pub(crate) fn edited(from: &str, name: &str, edit: impl Fn(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut tensors = Tensor::read_safetensors(fixture(from)).unwrap();
    edit(&mut tensors);
    let path = scratch(name);
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn malformed_references_exit_2() {
    let one_d = edited("v2_100_eval_224.safetensors", "one_d.safetensors", |t| {
        for (k, v) in t.iter_mut() {
            if k == "logits.bf16" {
                *v = Tensor::zeros([1000], (Kind::Float, tch::Device::Cpu));
            }
        }
    });
    let (code, text) = parity(&one_d, "eval", "bf16");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("logits.bf16"), "{text}");

    let empty = edited("v2_100_eval_224.safetensors", "empty.safetensors", |t| {
        for (k, v) in t.iter_mut() {
            match k.as_str() {
                "input" => *v = Tensor::zeros([0, 3, 224, 224], (Kind::Float, tch::Device::Cpu)),
                "logits" => *v = Tensor::zeros([0, 1000], (Kind::Float, tch::Device::Cpu)),
                _ => {}
            }
        }
        t.retain(|(k, _)| k == "input" || k == "logits");
    });
    let (code, text) = parity(&empty, "eval", "fp32");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no samples"), "{text}");
}

/// PyTorch's logits shifted by 1e-3 (ten times the fp32 tolerance; every stage map and the top-5
/// unchanged): the logit error alone fails the run, with exit 1.
#[test]
fn shifted_logits_fail() {
    let eval = "v2_100_eval_224.safetensors";
    let (code, text) = parity(&fixture(eval), "eval", "fp32");
    assert_eq!(code, Some(0), "{text}");
    let shifted = edited(eval, "shifted.safetensors", |t| {
        for (k, v) in t.iter_mut() {
            if k == "logits" {
                *v = &*v + 1e-3;
            }
        }
    });
    let (code, text) = parity(&shifted, "eval", "fp32");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL"), "{text}");
    assert!(text.contains("top-5 identical 2/2"), "{text}");
    assert!(text.contains("logits: max abs 1.0"), "{text}");
}

#[test]
fn nan_running_statistics_fail() {
    let nan = edited("v2_100_train_224.safetensors", "nan.safetensors", |t| {
        for (k, v) in t.iter_mut() {
            if k == "state.features.5.conv.1.1.running_var" {
                *v = v.fill(f64::NAN);
            }
        }
    });
    let (code, text) = parity(&nan, "train", "fp32");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL") && text.contains("NaN"), "{text}");
    let (code, text) = parity(&fixture("v2_100_train_224.safetensors"), "train", "fp32");
    assert_eq!(code, Some(0), "{text}");
}

#[cfg(unix)]
#[test]
fn classify_skips_a_fifo() {
    let dir = scratch("fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/samples/chelsea.png");
    std::fs::copy(sample, dir.join("a.png")).unwrap();
    let fifo = dir.join("b.png");
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = Command::new("timeout")
        .arg("60")
        .arg(BIN)
        .args([
            "classify",
            "--device",
            "cpu",
            "--json",
            "--top-k",
            "1",
            "--weights",
        ])
        .arg(fixture("v2_100.safetensors"))
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0]["top"].is_array(), "{stdout}");
    assert_eq!(lines[1]["error"], "not a regular file", "{stdout}");
}
