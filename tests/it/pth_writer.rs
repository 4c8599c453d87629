//! `weights::write_pth` / `write_pth_value` (the `torch.save` zip writer): round trips through
//! our reader, and PyTorch reading what we write with `torch.load(weights_only=True)`: tensors of
//! every dtype, views, a storage shared by two keys, a nested training checkpoint, and a seeded
//! MobileNetV2 state dict converted by `mobilenet convert` loaded strictly into torchvision's model.

use crate::common::{model_fixture, output_ok, BIN};
use mobilenet::value::{Dict, Key, Value};
use mobilenet::weights::{self, Format};
use mobilenet::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

/// A fresh temporary folder for one test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-pth-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `script` with the project's Python (`.venv`), the paths as its arguments, with torch's
/// serialization debug checks on (storage offsets computed from the layout are checked against
/// the archive's). Fails the test with its output unless it prints `ok`.
fn python(script: &str, args: &[&Path]) {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("TORCH_SERIALIZATION_DEBUG", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Python that checks a value loaded with `torch.load(p, weights_only=True)` against the one
/// expected: `same(got, want)` compares types exactly (dict vs OrderedDict, list vs tuple, int vs
/// bool), keys in order, and tensors by dtype, shape and values. `load(p)` loads with each of
/// torch's read paths (plain, mmap, mmap with storage offsets computed from the layout).
const PY_COMPARE: &str = r#"
import collections, sys, zipfile, torch
from collections import OrderedDict
def same(a, b, at="value"):
    assert type(a) is type(b), (at, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (at, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), (at, a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b), (at, list(a), list(b))
        for k in a:
            same(a[k], b[k], f"{at}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (at, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{at}[{i}]")
    else:
        assert a == b, (at, a, b)
def load(p):
    assert zipfile.ZipFile(p).testzip() is None
    out = [torch.load(p, weights_only=True), torch.load(p, weights_only=True, mmap=True)]
    torch.utils.serialization.config.load.calculate_storage_offsets = True
    out.append(torch.load(p, weights_only=True, mmap=True))
    torch.utils.serialization.config.load.calculate_storage_offsets = False
    return out
base = torch.arange(24, dtype=torch.float32) * 0.25 - 3.0
cube = base.reshape(2, 3, 4)
ints = torch.arange(-5, 5)
mat = torch.arange(12, dtype=torch.float32).reshape(3, 4)
"#;

/// Tensors of every dtype, 0-d to 3-d, an empty one, non-contiguous views, and one tensor under
/// two keys. (`PY_COMPARE`'s `cube`, `ints`, `mat` are the same values in Python.)
fn sample_tensors() -> Vec<(String, Tensor)> {
    let cube = (Tensor::arange(24, (Kind::Float, CPU)) * 0.25 - 3.0).reshape([2, 3, 4]);
    let ints = Tensor::arange_start(-5, 5, (Kind::Int64, CPU));
    let mat = Tensor::arange(12, (Kind::Float, CPU)).reshape([3, 4]);
    let tensors = [
        ("f32", cube.shallow_clone()),
        ("f16", cube.to_kind(Kind::Half)),
        ("bf16", cube.to_kind(Kind::BFloat16)),
        ("f64", cube.to_kind(Kind::Double)),
        ("i64", ints.shallow_clone()),
        ("i32", ints.to_kind(Kind::Int)),
        ("i16", ints.to_kind(Kind::Int16)),
        ("i8", ints.to_kind(Kind::Int8)),
        ("u8", Tensor::arange(10, (Kind::Uint8, CPU)) * 25),
        ("bool", Tensor::from_slice(&[true, false, true])),
        ("scalar", Tensor::scalar_tensor(2.5, (Kind::Float, CPU))),
        ("empty", Tensor::zeros([0, 3], (Kind::Float, CPU))),
        ("transposed", mat.tr()),
        ("narrowed", mat.narrow(1, 1, 2)),
        ("tied_a", mat.shallow_clone()),
        ("tied_b", mat.shallow_clone()),
    ];
    tensors
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .collect()
}

/// `sample_tensors` in Python.
const PY_SAMPLE: &str = r#"
sample = OrderedDict([
    ("f32", cube), ("f16", cube.half()), ("bf16", cube.bfloat16()), ("f64", cube.double()),
    ("i64", ints), ("i32", ints.int()), ("i16", ints.short()), ("i8", ints.to(torch.int8)),
    ("u8", torch.arange(10, dtype=torch.uint8) * 25), ("bool", torch.tensor([True, False, True])),
    ("scalar", torch.tensor(2.5)), ("empty", torch.zeros(0, 3)),
    ("transposed", mat.t()), ("narrowed", mat[:, 1:3]), ("tied_a", mat), ("tied_b", mat),
])
"#;

#[test]
fn state_dict_round_trips_through_our_reader() {
    let dir = temp_dir("round-trip");
    let path = dir.join("sd.pth");
    let tensors = sample_tensors();
    weights::write_pth(&path, &tensors).unwrap();
    let sd = weights::read(&path).unwrap();
    assert_eq!(sd.format, Format::TorchZip);
    let keys: Vec<&str> = sd.tensors.iter().map(|(k, _)| k.as_str()).collect();
    let want: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, want);
    for ((k, got), (_, t)) in sd.tensors.iter().zip(&tensors) {
        assert_eq!(got.size(), t.size(), "{k}");
        assert_eq!(got.kind(), t.kind(), "{k}");
        assert!(got.is_contiguous(), "{k}");
        assert!(got.equal(t), "{k}: {got} != {t}");
    }
    // One storage for the tensor stored under two keys.
    assert_eq!(
        sd.get("tied_a").unwrap().data_ptr(),
        sd.get("tied_b").unwrap().data_ptr()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A training checkpoint: the model's state dict, optimizer state indexed by parameter number,
/// hyperparameters, and every kind of plain value.
fn checkpoint() -> Value {
    let mat = Tensor::arange(12, (Kind::Float, CPU)).reshape([3, 4]);
    let ints = Tensor::arange_start(-5, 5, (Kind::Int64, CPU));
    let model = Value::state_dict(&[
        ("w".to_string(), mat.shallow_clone()),
        ("b".to_string(), ints),
    ]);
    let dict = |entries: Vec<(&str, Value)>| {
        Value::Dict(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    };
    let state = Value::Dict(Dict::from_iter([
        (
            Key::Int(0),
            dict(vec![
                ("momentum_buffer", (&mat * 2.0).into()),
                (
                    "step",
                    Tensor::scalar_tensor(3.0, (Kind::Float, CPU)).into(),
                ),
            ]),
        ),
        (1.into(), dict(vec![("momentum_buffer", Value::None)])),
    ]));
    let group = dict(vec![
        ("lr", 0.045.into()),
        ("momentum", 0.9.into()),
        ("weight_decay", 4e-5.into()),
        ("nesterov", false.into()),
        ("foreach", None::<bool>.into()),
        ("params", Value::List(vec![0.into(), 1.into()])),
    ]);
    dict(vec![
        ("model", model),
        (
            "optimizer",
            dict(vec![
                ("state", state),
                ("param_groups", Value::List(vec![group])),
            ]),
        ),
        ("epoch", 7.into()),
        ("global_step", 123_456_789_012i64.into()),
        ("min", i64::MIN.into()),
        ("max", i64::MAX.into()),
        ("neg", (-300).into()),
        ("best_acc1", 71.25.into()),
        ("inf", f64::INFINITY.into()),
        ("tiny", 5e-324.into()),
        ("arch", "mobilenet_v2".into()),
        ("note", "größe ✓ \"quoted\"\n".into()),
        (
            "args",
            Value::Tuple(vec![
                "a".into(),
                1.into(),
                Value::None,
                true.into(),
                2.5.into(),
            ]),
        ),
        ("empty_list", Value::List(vec![])),
        ("empty_tuple", Value::Tuple(vec![])),
        ("empty_dict", Value::Dict(Dict::new())),
        (
            "long_list",
            Value::List((0..2500).map(Value::Int).collect()),
        ),
        (
            "int_keys",
            Value::Dict(Dict::new().with(-1, Dict::new().with(1i64 << 40, "big"))),
        ),
        (
            "same_twice",
            Value::List(vec![mat.shallow_clone().into(), mat.into()]),
        ),
    ])
}

/// `checkpoint()` in Python.
const PY_CHECKPOINT: &str = r#"
checkpoint = {
    "model": OrderedDict([("w", mat), ("b", ints)]),
    "optimizer": {
        "state": {0: {"momentum_buffer": mat * 2, "step": torch.tensor(3.0)},
                  1: {"momentum_buffer": None}},
        "param_groups": [{"lr": 0.045, "momentum": 0.9, "weight_decay": 4e-5, "nesterov": False,
                          "foreach": None, "params": [0, 1]}],
    },
    "epoch": 7, "global_step": 123456789012, "min": -2**63, "max": 2**63 - 1, "neg": -300,
    "best_acc1": 71.25, "inf": float("inf"), "tiny": 5e-324,
    "arch": "mobilenet_v2", "note": "größe ✓ \"quoted\"\n",
    "args": ("a", 1, None, True, 2.5),
    "empty_list": [], "empty_tuple": (), "empty_dict": {},
    "long_list": list(range(2500)),
    "int_keys": {-1: {2**40: "big"}},
    "same_twice": [mat, mat],
}
"#;

/// The seeded MobileNetV2 fixture converted by `mobilenet convert --arch mobilenet_v2` into `dir`:
/// the same keys, in order, and tensors as the original, through our reader.
fn converted_mobilenet_v2(dir: &Path) -> (PathBuf, PathBuf) {
    let fixture = model_fixture("v2_100.pth");
    let out = dir.join("v2.pth");
    output_ok(
        Command::new(BIN)
            .arg("convert")
            .arg(&fixture)
            .arg(&out)
            .args(["--arch", "mobilenet_v2"]),
    );
    let (a, b) = (
        weights::read(&fixture).unwrap(),
        weights::read(&out).unwrap(),
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ((ka, ta), (kb, tb)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "{ka}");
    }
    (fixture, out)
}

/// One Python run (importing torch takes most of the time) checks the three files.
#[test]
fn torch_loads_what_we_write() {
    let dir = temp_dir("torch-load");
    let sd = dir.join("sd.pth");
    let ck = dir.join("checkpoint.pth");
    weights::write_pth(&sd, &sample_tensors()).unwrap();
    weights::write_pth_value(&ck, &checkpoint()).unwrap();
    // Our reader finds the model's state dict inside the checkpoint.
    let model = weights::read(&ck).unwrap();
    let keys: Vec<&str> = model.tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["w", "b"]);
    let (fixture, v2) = converted_mobilenet_v2(&dir);

    let script = [
        PY_COMPARE,
        PY_SAMPLE,
        PY_CHECKPOINT,
        r#"
import torchvision
sd, ck, fixture, v2 = sys.argv[1:]
for got in load(sd):
    same(got, sample)
    for k, t in got.items():
        assert t.is_contiguous(), k
    assert got["tied_a"].untyped_storage().data_ptr() == got["tied_b"].untyped_storage().data_ptr()
for got in load(ck):
    same(got, checkpoint)
    a, b = got["same_twice"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
want = torch.load(fixture, weights_only=True)
for got in load(v2):
    same(got, OrderedDict(want))
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(got, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k
print("ok")
"#,
    ]
    .concat();
    python(&script, &[&sd, &ck, &fixture, &v2]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unwritable_values_name_the_file_and_leave_none() {
    let dir = temp_dir("errors");
    let path = dir.join("bad.pth");
    let complex = Tensor::zeros([2], (Kind::ComplexFloat, CPU));
    let tensors = vec![
        ("ok".to_string(), Tensor::zeros([2], (Kind::Float, CPU))),
        ("c".to_string(), complex),
    ];
    match weights::write_pth(&path, &tensors) {
        Err(Error::Unwritable { path: p, msg }) => {
            assert_eq!(p, path);
            assert!(msg.starts_with("c: dtype ComplexFloat"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let dup = vec![
        ("a".to_string(), Tensor::zeros([1], (Kind::Float, CPU))),
        ("a".to_string(), Tensor::zeros([1], (Kind::Float, CPU))),
    ];
    let e = weights::write_pth(&path, &dup).unwrap_err();
    assert!(
        e.to_string().contains("\"a\"") && e.to_string().contains("twice"),
        "{e}"
    );
    assert!(!path.exists(), "nothing is written when a value cannot be");

    let missing = dir.join("no/such/folder/x.pth");
    match weights::write_pth_value(&missing, &Value::None) {
        Err(e @ Error::Io { .. }) => assert_eq!(e.path(), Some(missing.as_path())),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}
