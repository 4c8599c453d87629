//! Strict loading: one error lists every missing key, unexpected key, shape mismatch and dtype
//! problem; nothing is copied unless everything fits.

use mobilenet::error::{DtypeMismatch, ShapeMismatch};
use mobilenet::weights::{self, Format, LoadOptions, StateDict};
use mobilenet::Error;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn sd(tensors: Vec<(&str, Tensor)>) -> StateDict {
    StateDict {
        path: "in-memory.safetensors".into(),
        format: Format::Safetensors,
        tensors: tensors
            .into_iter()
            .map(|(k, t)| (k.to_string(), t))
            .collect(),
    }
}

/// conv (weight [4,3,3,3], bias [4]), bn (weight, bias, running stats, num_batches_tracked),
/// linear (weight [2,4], bias [2]).
fn model() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let _conv = tch::nn::conv2d(&root / "conv", 3, 4, 3, Default::default());
    let _bn = tch::nn::batch_norm2d(&root / "bn", 4, Default::default());
    let _fc = tch::nn::linear(&root / "fc", 4, 2, Default::default());
    let _ = (&root / "bn").add(
        "num_batches_tracked",
        Tensor::zeros([], (Kind::Int64, Device::Cpu)),
        false,
    );
    vs
}

fn full(kind: Kind) -> Vec<(&'static str, Tensor)> {
    let f = |shape: &[i64], v: f64| Tensor::full(shape, v, (kind, Device::Cpu));
    vec![
        ("conv.weight", f(&[4, 3, 3, 3], 0.5)),
        ("conv.bias", f(&[4], 1.5)),
        ("bn.weight", f(&[4], 2.0)),
        ("bn.bias", f(&[4], -1.0)),
        ("bn.running_mean", f(&[4], 0.25)),
        ("bn.running_var", f(&[4], 4.0)),
        ("bn.num_batches_tracked", Tensor::from(7i64)),
        ("fc.weight", f(&[2, 4], 3.0)),
        ("fc.bias", f(&[2], -3.0)),
    ]
}

fn var(vs: &VarStore, name: &str) -> Tensor {
    vs.variables()[name].shallow_clone()
}

#[test]
fn loads_everything_when_it_fits() {
    let vs = model();
    weights::load_into(&vs, &sd(full(Kind::Float)), &LoadOptions::default()).unwrap();
    assert!(var(&vs, "conv.weight").equal(&Tensor::full(
        [4, 3, 3, 3],
        0.5,
        (Kind::Float, Device::Cpu)
    )));
    assert_eq!(var(&vs, "bn.running_var").double_value(&[3]), 4.0);
    assert_eq!(var(&vs, "bn.num_batches_tracked").int64_value(&[]), 7);
    assert_eq!(var(&vs, "fc.bias").double_value(&[1]), -3.0);
    assert!(
        var(&vs, "fc.weight").requires_grad(),
        "still a trainable variable"
    );
}

#[test]
fn one_error_lists_every_problem_and_nothing_is_copied() {
    let vs = model();
    let before = var(&vs, "conv.weight").copy();
    let mut t = full(Kind::Float);
    t.retain(|(k, _)| *k != "fc.bias" && *k != "bn.running_mean");
    t[0].1 = Tensor::zeros([4, 3, 1, 1], (Kind::Float, Device::Cpu)); // conv.weight
    t.push(("fc.weight2", Tensor::zeros([1], (Kind::Float, Device::Cpu))));
    t.push(("extra.num_batches_tracked", Tensor::from(1i64))); // tolerated
    t.push(("head.bias", Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    let pos = t.iter().position(|(k, _)| *k == "bn.bias").unwrap();
    t[pos].1 = Tensor::zeros([4], (Kind::Bool, Device::Cpu));
    let err = weights::load_into(&vs, &sd(t), &LoadOptions::default()).unwrap_err();
    let Error::StateDictMismatch {
        path,
        missing,
        unexpected,
        shapes,
        dtypes,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(path.to_str(), Some("in-memory.safetensors"));
    assert_eq!(&missing[..], ["bn.running_mean", "fc.bias"]);
    assert_eq!(&unexpected[..], ["fc.weight2", "head.bias"]);
    let shape = ShapeMismatch {
        key: "conv.weight".into(),
        expected: vec![4, 3, 3, 3],
        got: vec![4, 3, 1, 1],
    };
    assert_eq!(&shapes[..], [shape]);
    let dtype = DtypeMismatch {
        key: "bn.bias".into(),
        tensor: "bool".into(),
        variable: "float32".into(),
    };
    assert_eq!(&dtypes[..], [dtype]);
    let err = err.to_string();
    for want in [
        "in-memory.safetensors: safetensors (10 tensors) does not match the model: 6 problems",
        "missing keys (2): bn.running_mean, fc.bias",
        "unexpected keys (2): fc.weight2, head.bias",
        "shape mismatches (1): conv.weight: expected [4, 3, 3, 3], got [4, 3, 1, 1]",
        "unsupported dtypes (1): bn.bias: a bool tensor cannot load into a float32 variable",
    ] {
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
    assert!(!err.contains("extra.num_batches_tracked"), "{err}");
    assert!(var(&vs, "conv.weight").equal(&before), "partial load");
    assert_ne!(
        var(&vs, "fc.weight").double_value(&[0, 0]),
        3.0,
        "partial load"
    );
}

#[test]
fn never_broadcasts() {
    // copy_ would broadcast [1] into [2] silently; strict loading refuses it.
    let vs = model();
    let mut t = full(Kind::Float);
    let pos = t.iter().position(|(k, _)| *k == "fc.bias").unwrap();
    t[pos].1 = Tensor::from_slice(&[9.0f32]);
    let err = weights::load_into(&vs, &sd(t), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::StateDictMismatch { shapes, .. } if shapes.len() == 1),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("fc.bias: expected [2], got [1]"),
        "{err}"
    );
    assert_ne!(var(&vs, "fc.bias").double_value(&[0]), 9.0);
}

#[test]
fn options_relax_missing_and_unexpected() {
    let vs = model();
    let mut t = full(Kind::Float);
    t.retain(|(k, _)| *k != "fc.bias");
    t.push((
        "other.weight",
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    ));
    let t2: Vec<_> = t.iter().map(|(k, v)| (*k, v.copy())).collect();
    assert!(weights::load_into(
        &vs,
        &sd(t),
        &LoadOptions {
            allow_missing: true,
            ..Default::default()
        }
    )
    .is_err());
    let opts = LoadOptions {
        allow_missing: true,
        allow_unexpected: true,
        keep_dtype: false,
    };
    weights::load_into(&vs, &sd(t2), &opts).unwrap();
    assert_eq!(var(&vs, "fc.weight").double_value(&[0, 0]), 3.0);
    // num_batches_tracked missing is fine.
    let vs = model();
    let mut t = full(Kind::Float);
    t.retain(|(k, _)| !k.ends_with("num_batches_tracked"));
    weights::load_into(&vs, &sd(t), &LoadOptions::default()).unwrap();
}

#[test]
fn half_checkpoints_convert_unless_keep_dtype() {
    for kind in [Kind::Half, Kind::BFloat16, Kind::Double] {
        let vs = model();
        weights::load_into(&vs, &sd(full(kind)), &LoadOptions::default()).unwrap();
        let w = var(&vs, "conv.weight");
        assert_eq!(w.kind(), Kind::Float);
        assert_eq!(w.double_value(&[0, 0, 0, 0]), 0.5);
        let vs = model();
        weights::load_into(
            &vs,
            &sd(full(kind)),
            &LoadOptions {
                keep_dtype: true,
                ..Default::default()
            },
        )
        .unwrap();
        let w = var(&vs, "conv.weight");
        assert_eq!(w.kind(), kind);
        assert_eq!(w.double_value(&[0, 0, 0, 0]), 0.5);
    }
}

#[test]
fn real_checkpoint_loads_into_matching_var_store() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/weights/tv_mobilenet_v2.pth");
    assert!(
        path.exists(),
        "{} is missing: run `make fixtures`",
        path.display()
    );
    for file in [
        "tv_mobilenet_v2.pth",
        "tv_mobilenet_v2_fp16.pth",
        "tv_mobilenet_v2_legacy.pth",
    ] {
        let sd = weights::read(&path.with_file_name(file)).unwrap();
        // A VarStore with the checkpoint's names and shapes, float32 (int64 for counters).
        let vs = VarStore::new(Device::Cpu);
        for (k, t) in &sd.tensors {
            let mut p = vs.root();
            let parts: Vec<&str> = k.split('.').collect();
            for c in &parts[..parts.len() - 1] {
                p = p.sub(*c);
            }
            let last = parts[parts.len() - 1];
            if t.is_floating_point() {
                let _ = p.zeros(last, &t.size());
            } else {
                let _ = p.add(
                    last,
                    Tensor::zeros(t.size(), (t.kind(), Device::Cpu)),
                    false,
                );
            }
        }
        weights::load_into(&vs, &sd, &LoadOptions::default()).unwrap();
        let vars = vs.variables();
        for (k, t) in &sd.tensors {
            assert!(vars[k].equal(&t.to_kind(vars[k].kind())), "{file}: {k}");
        }
    }
}
