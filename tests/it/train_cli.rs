//! `mobilenet train` end to end.
//!
//! - Step parity with PyTorch (`fixtures/train`, from tests/gen_train.py): from the same weights
//!   and images in the same order, 3 steps of SGD (momentum, Nesterov), AdamW and RMSprop on V1,
//!   V2, V3 Small and Large, with every norm, give the state dict PyTorch's steps give:
//!   parameters, running statistics and `num_batches_tracked`, within 1e-5 of each tensor's
//!   scale (they are in fact equal, bit for bit: the same kernels in the same order).
//! - Resume: 1 epoch, then `--resume` to 2, equals 2 epochs straight, bit for bit (augmentation,
//!   shuffling and dropout on).
//! - Round trip: PyTorch loads `model.pth` into torchvision strictly (and `checkpoint.pth`'s
//!   optimizer state into `torch.optim.SGD`) and computes the logits that `mobilenet parity`
//!   checks our model against.
//! - The data rules: sorted classes, corrupt files reported and skipped, an empty class folder, a
//!   contradicting `--num-classes`, and an output folder that already holds a run are errors;
//!   a classifier of another class count is re-initialized.

use crate::common::{output_ok, BIN};
use mobilenet::value::Value;
use mobilenet::weights;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Tensor;

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/train");
    assert!(
        dir.join("manifest.json").exists(),
        "{} is missing: run `make fixtures` (or `.venv/bin/python3 tests/gen_train.py --out \
         fixtures/train`)",
        dir.display()
    );
    dir
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `train` on the fixture images, CPU, one thread and one worker (deterministic).
fn train(args: &[&str], out: &Path) -> std::process::Output {
    let data = fixtures().join("data");
    let mut cmd = Command::new(BIN);
    cmd.arg("train")
        .args(args)
        .args(["--data", data.to_str().unwrap()])
        .args([
            "--device",
            "cpu",
            "--threads",
            "1",
            "--workers",
            "1",
            "--json",
        ])
        .arg("--out")
        .arg(out);
    cmd.output().unwrap()
}

fn state(path: &Path) -> HashMap<String, Tensor> {
    weights::read(path).unwrap().tensors.into_iter().collect()
}

/// Every tensor of `b` is in `a` with the same shape and dtype, and differs from it by at most
/// `tol` times `b`'s largest magnitude; the worst relative difference.
fn compare(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, tol: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "different key counts");
    let mut worst = 0.0f64;
    for (k, y) in b {
        let x = a.get(k).unwrap_or_else(|| panic!("{k} is missing"));
        assert_eq!(x.size(), y.size(), "{k}");
        assert_eq!(x.kind(), y.kind(), "{k}");
        if !y.is_floating_point() {
            assert!(x.equal(y), "{k}: {x:?} != {y:?}");
            continue;
        }
        let scale = y.abs().max().double_value(&[]).max(1e-12);
        let d = (x - y).abs().max().double_value(&[]) / scale;
        assert!(
            d <= tol,
            "{k}: differs by {d:e} of its scale (tolerance {tol:e})"
        );
        worst = worst.max(d);
    }
    worst
}

#[test]
fn steps_equal_pytorchs() {
    let dir = fixtures();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_object().unwrap();
    assert!(cases.len() >= 10);
    let val = dir.join("data");
    for (case, args) in cases {
        let out = tempdir(&format!("parity-{case}"));
        let mut args: Vec<String> = args
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let init = dir.join(case).join("init.pth");
        args.extend([
            "--weights".into(),
            init.display().to_string(),
            "--val".into(),
            val.display().to_string(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = train(&argv, &out);
        assert!(
            run.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let expected: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(case).join("expected.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let worst = compare(&state(&out.join("model.pth")), &expected, 1e-5);
        eprintln!("{case}: worst difference {worst:e} of a tensor's scale");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// A small run with everything random on: standard augmentation, shuffling, dropout.
const RESUME_ARGS: [&str; 14] = [
    "--arch",
    "mobilenet_v2",
    "--width-mult",
    "0.35",
    "--resolution",
    "32",
    "--schedule",
    "step",
    "--lr-step-size",
    "1",
    "--seed",
    "7",
    "--ema",
    "0.9",
];

#[test]
fn resume_equals_an_uninterrupted_run() {
    let straight = tempdir("straight");
    let split = tempdir("split");
    let run = train(
        &[&RESUME_ARGS[..], &["--epochs", "2", "--batch-size", "3"]].concat(),
        &straight,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = train(
        &[&RESUME_ARGS[..], &["--epochs", "1", "--batch-size", "3"]].concat(),
        &split,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let resume = split.display().to_string();
    let run = train(
        &[
            &RESUME_ARGS[..],
            &["--epochs", "2", "--batch-size", "3", "--resume", &resume],
        ]
        .concat(),
        &split,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("resumed from"), "{stderr}");
    for file in ["model.pth", "model_ema.pth"] {
        compare(&state(&straight.join(file)), &state(&split.join(file)), 0.0);
    }
    // The optimizer's momentum buffers and the schedule too.
    let a = weights::read_value(&straight.join("checkpoint.pth")).unwrap();
    let b = weights::read_value(&split.join("checkpoint.pth")).unwrap();
    assert_same_value(&a, &b, "checkpoint");
    // The metrics keep the first epoch's row and add the second.
    let rows = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    let epochs: Vec<i64> = rows
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, [1, 2]);
    // The same folder again without --resume would overwrite the run: refused.
    let run = train(
        &[&RESUME_ARGS[..], &["--epochs", "2", "--batch-size", "3"]].concat(),
        &split,
    );
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("already holds a run"), "{stderr}");
    // A resume with another batch size is refused, naming it.
    let run = train(
        &[
            &RESUME_ARGS[..],
            &["--epochs", "3", "--batch-size", "4", "--resume", &resume],
        ]
        .concat(),
        &split,
    );
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("batch_size"), "{stderr}");
    for d in [straight, split] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

fn assert_same_value(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Tensor(x), Value::Tensor(y)) => assert!(x.equal(y), "{at} differs"),
        (Value::Dict(x), Value::Dict(y)) | (Value::OrderedDict(x), Value::OrderedDict(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for ((kx, vx), (ky, vy)) in x.entries().iter().zip(y.entries()) {
                assert_eq!(kx, ky, "{at}");
                assert_same_value(vx, vy, &format!("{at}.{kx:?}"));
            }
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (vx, vy)) in x.iter().zip(y).enumerate() {
                assert_same_value(vx, vy, &format!("{at}[{i}]"));
            }
        }
        // "workers" and the like may differ; the values that matter are tensors and numbers.
        (Value::Float(x), Value::Float(y)) => assert_eq!(x.to_bits(), y.to_bits(), "{at}"),
        (x, y) => assert_eq!(format!("{x:?}"), format!("{y:?}"), "{at}"),
    }
}

#[test]
fn pytorch_loads_the_outputs_and_gets_our_logits() {
    let out = tempdir("roundtrip");
    let init = fixtures().join("v2_batch_sgd").join("init.pth");
    let args = [
        "--weights",
        init.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--resolution",
        "64",
        "--norm-weight-decay",
        "0",
    ];
    let run = train(&args, &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Fine-tuning announces nothing special here: the fixture already has 2 classes.
    let classes: Vec<String> =
        serde_json::from_slice(&std::fs::read(out.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes, ["a", "b"]);
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["arch"], "mobilenet_v2");
    assert_eq!(card["num_classes"], 2);
    assert_eq!(card["transform"]["crop"], 64);
    assert_eq!(card["transform"]["resize"], 73); // floor(64 / 0.875)

    let script = r#"
import sys, torch, torchvision
out = sys.argv[1]
m = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=2)
m.load_state_dict(torch.load(f"{out}/model.pth", weights_only=True))
ck = torch.load(f"{out}/checkpoint.pth", weights_only=True)
assert set(ck) >= {"model", "optimizer", "lr_scheduler", "epoch", "args"}, list(ck)
assert ck["epoch"] == 0 and ck["step"] == 2, (ck["epoch"], ck["step"])
m2 = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=2)
m2.load_state_dict(ck["model"])
from torchvision.models.mobilenetv2 import MobileNetV2
norm = [p for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters()]
ids = {id(p) for p in norm}
other = [p for p in m.parameters() if id(p) not in ids]
opt = torch.optim.SGD([{"params": other}, {"params": norm}], lr=0.01, momentum=0.9)
opt.load_state_dict(ck["optimizer"])
assert len(opt.state) == len(list(m.parameters()))
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1)
sched.load_state_dict(ck["lr_scheduler"])
print("ok")
"#;
    let py = output_ok(Command::new(python()).args(["-c", script]).arg(&out));
    assert!(String::from_utf8_lossy(&py.stdout).contains("ok"));

    // PyTorch's logits from the trained file, checked against ours by `parity`.
    let reference = out.join("reference.safetensors");
    let export = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/export.py");
    output_ok(
        Command::new(python())
            .arg(export)
            .args([
                "reference",
                "--arch",
                "mobilenet_v2",
                "--width-mult",
                "0.35",
            ])
            .args([
                "--num-classes",
                "2",
                "--resolution",
                "64",
                "--batch",
                "2",
                "--weights",
            ])
            .arg(out.join("model.pth"))
            .arg("--out")
            .arg(&reference),
    );
    let parity = output_ok(
        Command::new(BIN)
            .args(["parity", "--arch", "mobilenet_v2", "--width-mult", "0.35"])
            .args([
                "--num-classes",
                "2",
                "--device",
                "cpu",
                "--json",
                "--weights",
            ])
            .arg(out.join("model.pth"))
            .arg("--reference")
            .arg(&reference),
    );
    let report: serde_json::Value = serde_json::from_slice(&parity.stdout).unwrap();
    assert_eq!(report["pass"], true, "{report}");
    std::fs::remove_dir_all(out).unwrap();
}

/// A copy of the fixture images as an ImageFolder in a fresh folder, with `extra` files.
fn data_copy(name: &str, extra: &[(&str, &[u8])]) -> PathBuf {
    let dir = tempdir(name).join("data");
    let src = fixtures().join("data");
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..4 {
            let f = format!("{i}.png");
            std::fs::copy(src.join(class).join(&f), dir.join(class).join(&f)).unwrap();
        }
    }
    for (path, bytes) in extra {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    dir
}

fn train_on(data: &Path, args: &[&str], out: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("train")
        .args([
            "--arch",
            "mobilenet_v3_small",
            "--width-mult",
            "0.5",
            "--resolution",
            "32",
        ])
        .args([
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--workers",
            "2",
            "--json",
        ])
        .arg("--data")
        .arg(data)
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn bad_files_are_skipped_and_bad_folders_refused() {
    // A corrupt JPEG and a PNG cut short: reported by path, counted, and training goes on. A
    // `notes.txt` is not an image (by extension) and is not looked at.
    let png = std::fs::read(fixtures().join("data/a/0.png")).unwrap();
    let data = data_copy(
        "bad",
        &[
            ("a/broken.jpg", b"\xff\xd8\xff\xe0 not really"),
            ("b/deep/cut.PNG", &png[..png.len() / 2]),
            ("b/notes.txt", b"hello"),
        ],
    );
    let out = data.parent().unwrap().join("out");
    let run = train_on(&data, &["--epochs", "1", "--val"], &out);
    // `--val` without a value is a usage error.
    assert_eq!(run.status.code(), Some(2));
    let run = train_on(&data, &["--epochs", "1"], &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    assert!(stderr.contains("cut.PNG"), "{stderr}");
    assert!(!stderr.contains("notes.txt"), "{stderr}");
    let rows = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert_eq!(row["skipped_files"], 2, "{row}");
    for key in [
        "lr",
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
    ] {
        assert!(row[key].is_number(), "{key}: {row}");
    }

    // --num-classes that contradicts the folders.
    let out2 = data.parent().unwrap().join("out2");
    let run = train_on(&data, &["--num-classes", "3"], &out2);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("--num-classes 3") && stderr.contains("2 class folders"),
        "{stderr}"
    );

    // An empty class folder.
    std::fs::create_dir_all(data.join("c")).unwrap();
    let run = train_on(&data, &[], &out2);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("found no valid file for the classes c"),
        "{stderr}"
    );
    assert!(!out2.exists(), "nothing is written for bad data");
    std::fs::remove_dir_all(data.parent().unwrap()).unwrap();
}

#[test]
fn another_class_count_resets_the_classifier() {
    // A 1000-class V3 Small checkpoint fine-tuned on 2 classes, head only.
    let out = tempdir("reset");
    let dir = fixtures();
    let src = crate::common::model_fixture("v3s_100.safetensors");
    let run = Command::new(BIN)
        .arg("train")
        .args([
            "--resolution",
            "32",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--freeze-features",
        ])
        .args(["--device", "cpu", "--workers", "2", "--weights"])
        .arg(&src)
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "has 1000 classes, the data 2: the classifier (classifier.3) is re-initialized"
        ),
        "{stderr}"
    );
    // Frozen features: only the classifier moved, and the BatchNorm statistics stayed.
    let before: HashMap<String, Tensor> =
        weights::read(&src).unwrap().tensors.into_iter().collect();
    let after = state(&out.join("model.pth"));
    for (k, t) in &after {
        if k.starts_with("features.") {
            assert!(t.equal(&before[k]), "{k} changed");
        }
    }
    assert!(!after["classifier.0.weight"].equal(&before["classifier.0.weight"]));
    assert_eq!(after["classifier.3.weight"].size(), [2, 1024]);
    std::fs::remove_dir_all(out).unwrap();
}

/// `--log-every N`: with `--json`, a step row every N steps (run-wide step numbers, the epoch
/// they belong to, elapsed time that grows), between the epoch rows.
#[test]
fn log_every_reports_steps() {
    let data = data_copy("log-every", &[]);
    let step_rows = |epochs: i64, log_every: &str| -> Vec<serde_json::Value> {
        let out = tempdir(&format!("log-every-{log_every}"));
        let args = ["--epochs", &epochs.to_string(), "--log-every", log_every];
        let run = train_on(&data, &args, &out);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let rows: Vec<serde_json::Value> = String::from_utf8(run.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // 8 images at batch 4: 2 steps per epoch; the epoch rows and the summary are still there.
        let epoch_rows = rows.iter().filter(|r| r["train_loss"].is_f64()).count();
        assert_eq!(epoch_rows as i64, epochs, "{rows:?}");
        assert_eq!(rows.last().unwrap()["steps"], 2 * epochs, "{rows:?}");
        rows.into_iter().filter(|r| r["event"] == "step").collect()
    };
    let every = step_rows(2, "1");
    let steps: Vec<(i64, i64)> = every
        .iter()
        .map(|r| (r["epoch"].as_i64().unwrap(), r["step"].as_i64().unwrap()))
        .collect();
    assert_eq!(steps, [(1, 1), (1, 2), (2, 3), (2, 4)], "{every:?}");
    let elapsed: Vec<f64> = every
        .iter()
        .map(|r| r["elapsed"].as_f64().unwrap())
        .collect();
    assert!(
        elapsed.windows(2).all(|w| w[0] > 0.0 && w[1] > w[0]),
        "{elapsed:?}"
    );
    for r in &every {
        assert!(r["loss"].as_f64().unwrap().is_finite(), "{r}");
        assert!((0.0..=1.0).contains(&r["top1"].as_f64().unwrap()), "{r}");
    }
    let second: Vec<i64> = step_rows(1, "2")
        .iter()
        .map(|r| r["step"].as_i64().unwrap())
        .collect();
    assert_eq!(second, [2]);
}
