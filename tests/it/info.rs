//! The binary runs without LD_LIBRARY_PATH, reports the pinned libtorch (`torch==X` in
//! weights/requirements.txt, exported by build.rs), and links libtorch so that libtorch_cuda is
//! loaded where there is a GPU.

use std::process::Command;

use crate::common::BIN;

/// The PyTorch release weights/requirements.txt pins.
const TORCH_PIN: &str = env!("MOBILENET_TORCH_PIN");

#[test]
fn info_json_reports_pinned_libtorch() {
    let out = Command::new(BIN)
        .args(["info", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run mobilenet info --json");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let version = v["libtorch_version"]
        .as_str()
        .expect("libtorch_version is a string");
    assert!(
        version.starts_with(TORCH_PIN),
        "libtorch_version = {version}"
    );
    assert_eq!(v["tch_version"], "0.24.0");
    for key in [
        "cuda_available",
        "cuda_device_count",
        "cuda_devices",
        "cudnn_available",
        "cudnn_version",
        "intra_op_threads",
        "default_device",
    ] {
        assert!(v.get(key).is_some(), "missing field {key} in {v}");
    }
    let cuda = v["cuda_available"].as_bool().unwrap();
    let count = v["cuda_device_count"].as_i64().unwrap();
    assert_eq!(
        cuda,
        count > 0,
        "cuda_available={cuda} but device count {count}"
    );
    assert_eq!(v["default_device"], if cuda { "cuda:0" } else { "cpu" });
    assert!(v["intra_op_threads"].as_i64().unwrap() >= 1);
}

#[test]
fn info_text_runs() {
    let out = Command::new(BIN)
        .arg("info")
        .output()
        .expect("run mobilenet info");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("libtorch") && text.contains(TORCH_PIN),
        "{text}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn binary_needs_libtorch_and_has_rpath() {
    let out = Command::new("readelf")
        .args(["-d", BIN])
        .output()
        .expect("readelf -d (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Shared library: [libtorch.so]"),
        "libtorch.so is not NEEDED, so libtorch_cuda would not load:\n{text}"
    );
    assert!(
        text.contains("RPATH") || text.contains("RUNPATH"),
        "no rpath:\n{text}"
    );
}
