//! `mobilenet convert IN OUT --arch A`: validates against the architecture before writing, and
//! the converted file loads to the same model.

use std::process::Command;

use crate::common::{model_fixture as fixture, output_ok, BIN};

#[test]
fn convert_validates_against_the_architecture() {
    let dir = std::env::temp_dir().join(format!("mobilenet-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("v2.safetensors");
    let pth = fixture("v2_100.pth");

    output_ok(Command::new(BIN).args([
        "convert",
        pth.to_str().unwrap(),
        out.to_str().unwrap(),
        "--arch",
        "mobilenet_v2",
    ]));
    // The converted file holds the same tensors: parity against the same reference passes.
    let parity = Command::new(BIN)
        .args([
            "parity",
            "--arch",
            "mobilenet_v2",
            "--device",
            "cpu",
            "--weights",
        ])
        .arg(&out)
        .arg("--reference")
        .arg(fixture("v2_100_eval_224.safetensors"))
        .output()
        .unwrap();
    assert!(
        parity.status.success(),
        "{}",
        String::from_utf8_lossy(&parity.stdout)
    );

    let bad_out = dir.join("v1.safetensors");
    let bad = Command::new(BIN)
        .args(["convert", pth.to_str().unwrap(), bad_out.to_str().unwrap()])
        .args(["--arch", "mobilenet_v1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing keys (137)") && err.contains("blocks.0.0.conv_dw.weight"),
        "{err}"
    );
    assert!(
        !bad_out.exists(),
        "nothing is written when validation fails"
    );

    let wrong_ext = Command::new(BIN)
        .args([
            "convert",
            pth.to_str().unwrap(),
            dir.join("x.bin").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(wrong_ext.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}
