//! Weight files as PyTorch, torchvision, timm and safetensors write them (fixtures from
//! tests/gen_weights.py): every tensor compared bit for bit with what Python saved; bad and
//! malicious files refused with an error naming the file and the problem, also through the CLI.

use mobilenet::models::Arch;
use mobilenet::weights::{self, DType, Format};
use mobilenet::Error;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/weights")
}

fn expected() -> Value {
    let path = dir().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `make fixtures` (or `.venv/bin/python3 tests/gen_weights.py --out fixtures/weights`)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let c = t.contiguous();
    let n = c.numel();
    let mut buf = vec![0u8; n * c.kind().elt_size_in_bytes()];
    c.f_copy_data_u8(&mut buf, n).unwrap();
    buf
}

fn dtype_name(t: &Tensor) -> &'static str {
    DType::from_kind(t.kind()).expect("supported dtype").name()
}

/// Compares a state dict with its expected description: keys in order, dtype, shape, CRC-32
/// of the little-endian bytes, and the values of small tensors.
fn check_state(file: &str, sd: &weights::StateDict, want: &Value) {
    let mut want: Vec<&Value> = want.as_array().unwrap().iter().collect();
    let mut got: Vec<&(String, Tensor)> = sd.tensors.iter().collect();
    if sd.format == Format::Safetensors {
        // safetensors files are ordered by dtype alignment and name, not as the state dict.
        want.sort_by_key(|e| e[0].as_str().unwrap());
        got.sort_by_key(|(k, _)| k.as_str());
    }
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = want.iter().map(|e| e[0].as_str().unwrap()).collect();
    assert_eq!(keys, want_keys, "{file}: keys");
    for ((key, t), e) in got.into_iter().zip(want) {
        assert_eq!(dtype_name(t), e[1].as_str().unwrap(), "{file}: {key} dtype");
        let shape: Vec<i64> = e[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(t.size(), shape, "{file}: {key} shape");
        assert_eq!(
            crc32fast::hash(&bytes_of(t)) as u64,
            e[3].as_u64().unwrap(),
            "{file}: {key} bytes"
        );
        if let Some(values) = e[4].as_array() {
            let got = Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap();
            let want: Vec<f64> = values.iter().map(|v| v.as_f64().unwrap()).collect();
            // (The CRC above is the exact check; serde_json's float parsing may be 1 ulp off.)
            let close = got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| (g - w).abs() <= 1e-15 * w.abs().max(1.0));
            assert!(close, "{file}: {key} values {got:?} != {want:?}");
        }
    }
}

fn format_of(name: &str) -> Format {
    match name {
        "TorchZip" => Format::TorchZip,
        "TorchLegacy" => Format::TorchLegacy,
        "Safetensors" => Format::Safetensors,
        "TchOt" => Format::TchOt,
        other => panic!("unknown format {other}"),
    }
}

#[test]
fn good_files_match_python_bit_for_bit() {
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    assert!(files.len() >= 25, "only {} good fixtures", files.len());
    for (name, info) in files {
        let sd = weights::read(&dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            sd.format,
            format_of(info["format"].as_str().unwrap()),
            "{name}"
        );
        check_state(name, &sd, &exp["states"][info["state"].as_str().unwrap()]);
    }
}

#[test]
fn formats_agree_on_mobilenet_v2() {
    let read = |n: &str| weights::read(&dir().join(n)).unwrap();
    let zip = read("tv_mobilenet_v2.pth");
    assert_eq!(zip.tensors.len(), 314);
    assert_eq!(zip.num_parameters(), 3_504_872);
    for other in ["tv_mobilenet_v2_legacy.pth", "tv_mobilenet_v2.safetensors"] {
        let o = read(other);
        assert_eq!(o.tensors.len(), zip.tensors.len());
        for (k1, t1) in &zip.tensors {
            let t2 = o.get(k1).unwrap_or_else(|| panic!("{other}: no {k1}"));
            assert_eq!(t1.kind(), t2.kind(), "{other}: {k1}");
            assert_eq!(bytes_of(t1), bytes_of(t2), "{other}: {k1}");
        }
    }
    // fp16 is the float32 checkpoint rounded.
    let half = read("tv_mobilenet_v2_fp16.pth");
    let w = zip.get("features.0.0.weight").unwrap();
    let h = half.get("features.0.0.weight").unwrap();
    assert_eq!(h.kind(), Kind::Half);
    assert!(w.to_kind(Kind::Half).equal(h));
    assert_eq!(half.num_parameters(), zip.num_parameters());
    // Wrapped, legacy-wrapped and DDP checkpoints hold the same small state dict.
    let small = read("tv_mobilenet_v2_050_c10.pt");
    for n in [
        "wrapped_state_dict.pth",
        "wrapped_model.pth",
        "wrapped_model_legacy.pth",
        "ddp_module.pth",
    ] {
        let o = read(n);
        let keys: Vec<_> = o.tensors.iter().map(|(k, _)| k.clone()).collect();
        let want: Vec<_> = small.tensors.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, want, "{n}");
        assert!(o
            .get("features.0.0.weight")
            .unwrap()
            .equal(small.get("features.0.0.weight").unwrap()));
    }
}

#[test]
fn views_share_storage_and_keep_strides() {
    let sd = weights::read(&dir().join("views.pth")).unwrap();
    let a = sd.get("a").unwrap();
    let c = sd.get("c").unwrap();
    let d = sd.get("d").unwrap();
    assert_eq!(c.stride(), vec![1, 6]);
    assert_eq!(d.stride(), vec![6, 2]);
    assert!(c.equal(&a.tr()));
    assert_eq!(
        sd.get("b").unwrap().data_ptr() as usize,
        a.data_ptr() as usize + 2 * 6 * 4
    );
    assert_eq!(c.data_ptr(), a.data_ptr(), "a view, not a copy");
}

/// The kind of failure a bad fixture is (see tests/gen_weights.py).
fn expected_variant(name: &str, err: &Error) -> bool {
    match name {
        "mal_raw.pkl" | "wrong_magic.pth" => matches!(err, Error::UnknownFormat { .. }),
        n if n.starts_with("mal_")
            || n.starts_with("whole_model")
            || n == "unsupported_storage.pth" =>
        {
            matches!(err, Error::RefusedGlobal { .. })
        }
        "unknown_opcode.pth" | "truncated_legacy_pickle.pth" => {
            matches!(
                err,
                Error::Malformed {
                    offset: Some(_),
                    ..
                }
            )
        }
        _ => matches!(err, Error::Malformed { .. }),
    }
}

#[test]
fn bad_files_fail_with_the_file_and_the_problem() {
    let exp = expected();
    let bad = exp["bad"].as_object().unwrap();
    assert!(bad.len() >= 30, "only {} bad fixtures", bad.len());
    for (name, words) in bad {
        let path = dir().join(name);
        let err = match weights::read(&path) {
            Ok(sd) => panic!(
                "{name}: read {} tensors, expected an error",
                sd.tensors.len()
            ),
            Err(e) => e,
        };
        assert!(expected_variant(name, &err), "{name}: {err:?}");
        assert_eq!(err.path(), Some(path.as_path()), "{name}: {err}");
        let err = err.to_string();
        assert!(err.contains(&path.display().to_string()), "{name}: {err}");
        for w in words.as_array().unwrap() {
            assert!(
                err.contains(w.as_str().unwrap()),
                "{name}: {err:?} lacks {w}"
            );
        }
    }
    let marker = dir().join(exp["pwned_marker"].as_str().unwrap());
    assert!(!marker.exists(), "a malicious pickle ran code");
}

#[test]
fn malicious_pickles_name_the_global() {
    let cases = [
        ("mal_os_system.pth", "posix", "system"),
        ("mal_eval.pth", "builtins", "eval"),
        ("mal_subprocess.pth", "subprocess", "Popen"),
        (
            "whole_model.pth",
            "torchvision.models.mobilenetv2",
            "MobileNetV2",
        ),
    ];
    for (file, want_module, want_name) in cases {
        let err = weights::read(&dir().join(file)).unwrap_err();
        let Error::RefusedGlobal { module, name, .. } = &err else {
            panic!("{file}: {err:?}")
        };
        assert_eq!((module.as_str(), name.as_str()), (want_module, want_name));
        let text = err.to_string();
        assert!(
            text.contains(&format!("refused global `{module}.{name}`"))
                && text.contains("nothing was executed"),
            "{file}: {text}"
        );
    }
}

#[test]
fn cli_inspect_reports_and_refuses() {
    let exp = expected();
    let bin = env!("CARGO_BIN_EXE_mobilenet");
    // One file per kind of failure (the library test above covers them all), run together.
    let names = [
        "empty.pth",
        "wrong_magic.pth",
        "truncated_zip.pth",
        "truncated_legacy.pth",
        "truncated_safetensors.safetensors",
        "corrupt_storage.pth",
        "unknown_opcode.pth",
        "storage_size_oob.pth",
        "shape_too_big.pth",
        "huge_shape.pth",
        "st_header_oob.safetensors",
        "mal_os_system.pth",
        "mal_legacy_os_system.pth",
        "whole_model.pth",
    ];
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            assert!(
                exp["bad"].get(*name).is_some(),
                "{name} is not a bad fixture"
            );
            let child = Command::new(bin)
                .arg("inspect")
                .arg(dir().join(name))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (name, child)
        })
        .collect();
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(name),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let out = Command::new(bin)
        .args(["inspect", "--json"])
        .arg(dir().join("tv_mobilenet_v2.pth"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "torch zip (.pth)");
    assert_eq!(v["num_tensors"], 314);
    assert_eq!(v["num_parameters"], 3_504_872);
    assert_eq!(v["arch"]["arch"], "mobilenet_v2");
    assert_eq!(v["tensors"][0]["key"], "features.0.0.weight");
    assert_eq!(v["tensors"][0]["shape"], serde_json::json!([32, 3, 3, 3]));
    let out = Command::new(bin)
        .args(["inspect", "--bench", "--iters", "2"])
        .arg(dir().join("timm_mobilenetv1_100.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("mobilenetv1_100") && text.contains("ratio"),
        "{text}"
    );
}

#[test]
fn architectures_are_detected() {
    let exp = expected();
    for (name, want) in exp["arch"].as_object().unwrap() {
        let sd = weights::read(&dir().join(name)).unwrap();
        let got = weights::detect_architecture(&sd);
        if want.is_null() {
            assert_eq!(got, None, "{name}");
            continue;
        }
        let got = got.unwrap_or_else(|| panic!("{name}: no architecture detected"));
        let reference = want[0].as_str().unwrap();
        let arch = match reference.starts_with("mobilenetv1") {
            true => Arch::MobilenetV1,
            false => Arch::from_name(reference).unwrap(),
        };
        assert_eq!(got.arch, arch, "{name}");
        assert_eq!(got.reference_name(), reference, "{name}");
        assert_eq!(got.width_mult, want[1].as_f64().unwrap(), "{name}");
        assert_eq!(got.num_classes, want[2].as_i64().unwrap(), "{name}");
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mobilenet-weights-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn convert_round_trips_through_safetensors_pth_and_ot() {
    let bin = env!("CARGO_BIN_EXE_mobilenet");
    let src = dir().join("dtypes.pth");
    let orig = weights::read(&src).unwrap();
    for (ext, format) in [
        ("safetensors", Format::Safetensors),
        ("pth", Format::TorchZip),
        ("ot", Format::TchOt),
    ] {
        let out = tmp(&format!("dtypes.{ext}"));
        let run = Command::new(bin)
            .arg("convert")
            .arg(&src)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let back = weights::read(&out).unwrap();
        assert_eq!(back.format, format);
        let mut got: Vec<_> = back
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.size(), bytes_of(t)))
            .collect();
        let mut want: Vec<_> = orig
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.size(), bytes_of(t)))
            .collect();
        if format == Format::TchOt {
            got.sort();
            want.sort();
        }
        assert_eq!(got, want, "{ext}");
    }
    // Views are written contiguous and keep their values.
    let views = weights::read(&dir().join("views.pth")).unwrap();
    let out = tmp("views.safetensors");
    weights::write_safetensors(&out, &views.tensors).unwrap();
    let back = weights::read(&out).unwrap();
    for ((k, a), (_, b)) in views.tensors.iter().zip(&back.tensors) {
        assert!(a.equal(b), "{k}");
        assert!(b.is_contiguous());
    }
    let bad = Command::new(bin)
        .arg("convert")
        .arg(&src)
        .arg(tmp("x.bin"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unsupported output extension"));
}

#[test]
fn tch_ot_files_are_read_without_torchscript() {
    // As tch writes them: Tensor::save_multi and VarStore::save (names with dots).
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = root
        .sub("features")
        .sub("0")
        .sub("0")
        .randn_standard("weight", &[4, 3, 3, 3]);
    let b = root
        .sub("classifier")
        .sub("1")
        .randn_standard("bias", &[10]);
    let path = tmp("vs.ot");
    vs.save(&path).unwrap();
    let sd = weights::read(&path).unwrap();
    assert_eq!(sd.format, Format::TchOt);
    assert!(sd.get("features.0.0.weight").unwrap().equal(&w));
    assert!(sd.get("classifier.1.bias").unwrap().equal(&b));
    let i = Tensor::from_slice(&[1i64, -2, 3]);
    let path = tmp("multi.ot");
    Tensor::save_multi(&[("a.b", &w), ("i", &i)], &path).unwrap();
    let sd = weights::read(&path).unwrap();
    let keys: Vec<_> = sd.tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a.b", "i"]);
    assert!(sd.get("i").unwrap().equal(&i));
    // Our .ot reads back in tch too.
    let loaded = Tensor::load_multi(&path).unwrap();
    assert_eq!(loaded.len(), 2);
}

#[test]
fn format_is_chosen_by_content_not_extension() {
    for (src, ext) in [
        ("tv_mobilenet_v2_050_c10.pt", "safetensors"),
        ("dtypes.safetensors", "pth"),
        ("dtypes_legacy.pth", "ot"),
    ] {
        let copy = tmp(&format!("renamed-{src}.{ext}"));
        std::fs::copy(dir().join(src), &copy).unwrap();
        let a = weights::read(&dir().join(src)).unwrap();
        let b = weights::read(&copy).unwrap();
        assert_eq!(a.format, b.format);
        assert_eq!(a.tensors.len(), b.tensors.len());
    }
    assert_eq!(
        weights::detect_format(b"PK\x03\x04rest"),
        Some(Format::TorchZip)
    );
    assert_eq!(
        weights::detect_format(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"),
        Some(Format::TorchLegacy)
    );
    assert_eq!(
        weights::detect_format(b"\x02\0\0\0\0\0\0\0{}"),
        Some(Format::Safetensors)
    );
    assert_eq!(weights::detect_format(b"\x80\x02}q\x00."), None);
    let err = weights::read(Path::new("/nonexistent/weights.pth")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/weights.pth"),
        "{err}"
    );
}
