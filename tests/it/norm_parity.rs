//! Parity of the normalization layers with PyTorch 2.11, on the references that
//! `tests/gen_norm.py` writes to `fixtures/norm` (`make fixtures`).
//!
//! Per case (see `fixtures/norm/cases.json`) and per computation path (fused libtorch kernel,
//! explicit formula): load the case's initial parameters and buffers, then compare with PyTorch
//! the eval output and its gradients w.r.t. input, weight and bias, the same in train mode, the
//! running stats (and `num_batches_tracked`) after three training steps, and the eval output with
//! those stats. Also fused vs explicit, and loading each layer's state_dict into a VarStore.
//! Tolerance: `max |rust - torch| <= 1e-5` (fp32).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use mobilenet::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
    LayerNorm, LayerNormConfig, Norm2d, NormKind,
};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

const TOL: f64 = 1e-5;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/norm")
}

fn fixture_path(name: &str) -> PathBuf {
    let p = fixture_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make fixtures` (or `.venv/bin/python3 tests/gen_norm.py --out \
         fixtures/norm`)",
        p.display()
    );
    p
}

fn index() -> Value {
    let p = fixture_path("cases.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn read_tensors(file: &str) -> HashMap<String, Tensor> {
    let p = fixture_path(file);
    Tensor::read_safetensors(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make fixtures`)", p.display()))
        .into_iter()
        .collect()
}

/// `Err` with the worst element (index, rust value, torch value) when `max |rust - torch| > TOL`.
fn compare(what: &str, rust: &Tensor, torch: &Tensor) -> Result<f64, String> {
    if rust.size() != torch.size() {
        return Err(format!(
            "{what}: shape {:?} (rust) vs {:?} (torch)",
            rust.size(),
            torch.size()
        ));
    }
    if rust.numel() == 0 {
        return Ok(0.0);
    }
    let r = rust.detach().to_kind(Kind::Double).flatten(0, -1);
    let t = torch.detach().to_kind(Kind::Double).flatten(0, -1);
    let diff = (&r - &t)
        .abs()
        .nan_to_num(f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let i = diff.argmax(None, false).int64_value(&[]);
    let max = diff.double_value(&[i]);
    if max <= TOL {
        return Ok(max);
    }
    // Unravel the flat index.
    let shape = rust.size();
    let mut idx = vec![0i64; shape.len()];
    let mut rem = i;
    for d in (0..shape.len()).rev() {
        idx[d] = rem % shape[d];
        rem /= shape[d];
    }
    Err(format!(
        "{what}: max |rust - torch| = {max:.3e} > {TOL:e} at index {idx:?} of shape {shape:?}: \
         rust {} vs torch {}",
        r.double_value(&[i]),
        t.double_value(&[i])
    ))
}

/// A layer built from a case's description, any of the four (or a `Norm2d`).
#[derive(Debug)]
enum Layer {
    Bn(BatchNorm),
    In(InstanceNorm),
    Ln(LayerNorm),
    Gn(GroupNorm),
    N2(Norm2d),
}

impl Layer {
    fn forward(&self, xs: &Tensor, train: bool, explicit: bool) -> mobilenet::Result<Tensor> {
        match (self, explicit) {
            (Layer::Bn(m), false) => m.f_forward_t(xs, train),
            (Layer::Bn(m), true) => m.forward_explicit(xs, train),
            (Layer::In(m), false) => m.f_forward_t(xs, train),
            (Layer::In(m), true) => m.forward_explicit(xs, train),
            (Layer::Ln(m), false) => m.f_forward_t(xs, train),
            (Layer::Ln(m), true) => m.forward_explicit(xs, train),
            (Layer::Gn(m), false) => m.f_forward_t(xs, train),
            (Layer::Gn(m), true) => m.forward_explicit(xs, train),
            (Layer::N2(m), false) => m.f_forward_t(xs, train),
            (Layer::N2(m), true) => m.forward_explicit(xs, train),
        }
    }

    fn weight_bias(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        match self {
            Layer::Bn(m) => (m.weight(), m.bias()),
            Layer::In(m) => (m.weight(), m.bias()),
            Layer::Ln(m) => (m.weight(), m.bias()),
            Layer::Gn(m) => (m.weight(), m.bias()),
            Layer::N2(m) => (m.weight(), m.bias()),
        }
    }
}

fn momentum(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn build(case: &Value, p: &nn::Path) -> Layer {
    let f = |k: &str| case[k].as_f64().unwrap_or_else(|| panic!("{k} in {case}"));
    let i = |k: &str| case[k].as_i64().unwrap_or_else(|| panic!("{k} in {case}"));
    let b = |k: &str| case[k].as_bool().unwrap_or_else(|| panic!("{k} in {case}"));
    let layer = case["layer"].as_str().unwrap();
    let r = match layer {
        "batch_norm1d" | "batch_norm2d" => {
            let cfg = BatchNormConfig {
                eps: f("eps"),
                momentum: momentum(&case["momentum"]),
                affine: b("affine"),
                track_running_stats: b("track_running_stats"),
            };
            let bn = if layer == "batch_norm1d" {
                BatchNorm::new1d(p, i("num_features"), cfg)
            } else {
                BatchNorm::new2d(p, i("num_features"), cfg)
            };
            bn.map(Layer::Bn)
        }
        "instance_norm1d" | "instance_norm2d" => {
            let cfg = InstanceNormConfig {
                eps: f("eps"),
                momentum: momentum(&case["momentum"]),
                affine: b("affine"),
                track_running_stats: b("track_running_stats"),
            };
            let m = if layer == "instance_norm1d" {
                InstanceNorm::new1d(p, i("num_features"), cfg)
            } else {
                InstanceNorm::new2d(p, i("num_features"), cfg)
            };
            m.map(Layer::In)
        }
        "layer_norm" => {
            let ns: Vec<i64> = case["normalized_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let cfg = LayerNormConfig {
                eps: f("eps"),
                elementwise_affine: b("elementwise_affine"),
                bias: b("bias"),
            };
            LayerNorm::new(p, &ns, cfg).map(Layer::Ln)
        }
        "group_norm" => {
            let cfg = GroupNormConfig {
                eps: f("eps"),
                affine: b("affine"),
            };
            GroupNorm::new(p, i("num_groups"), i("num_channels"), cfg).map(Layer::Gn)
        }
        "norm2d" => {
            let kind: NormKind = case["kind"].as_str().unwrap().parse().unwrap();
            let bn = BatchNormConfig {
                eps: f("bn_eps"),
                momentum: Some(f("bn_momentum")),
                ..Default::default()
            };
            kind.build(p, i("channels"), bn).map(Layer::N2)
        }
        other => panic!("unknown layer {other}"),
    };
    r.unwrap_or_else(|e| panic!("building {case}: {e}"))
}

/// Output and gradients w.r.t. input, weight and bias for the upstream gradient `gy`.
fn forward_grad(
    layer: &Layer,
    x: &Tensor,
    gy: &Tensor,
    train: bool,
    explicit: bool,
    out: &mut Vec<(String, Tensor)>,
    prefix: &str,
) -> mobilenet::Result<()> {
    let (w, b) = layer.weight_bias();
    for t in [w, b].into_iter().flatten() {
        t.shallow_clone().zero_grad();
    }
    let xg = x.detach().copy().set_requires_grad(true);
    let y = layer.forward(&xg, train, explicit)?;
    (&y * gy).sum(Kind::Float).backward();
    out.push((format!("{prefix}.y"), y.detach()));
    out.push((format!("{prefix}.gx"), xg.grad()));
    if let Some(w) = w {
        out.push((format!("{prefix}.gw"), w.grad().copy()));
    }
    if let Some(b) = b {
        out.push((format!("{prefix}.gb"), b.grad().copy()));
    }
    Ok(())
}

/// Runs a case's sequence on one path; returns the named results (keys as in the fixture).
fn run_case(
    case: &Value,
    t: &HashMap<String, Tensor>,
    explicit: bool,
) -> Result<Vec<(String, Tensor)>, String> {
    let name = case["name"].as_str().unwrap();
    let get = |k: &str| {
        t.get(&format!("{name}.{k}"))
            .ok_or_else(|| format!("{name}: fixture lacks {k}"))
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = build(case, &vs.root());
    // The var-store names are PyTorch's state_dict keys; load the initial state.
    let vars = vs.variables();
    let want: BTreeSet<String> = t
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{name}.init.")).map(String::from))
        .collect();
    let have: BTreeSet<String> = vars.keys().cloned().collect();
    if want != have {
        return Err(format!(
            "{name}: var-store names {have:?} != state_dict keys {want:?}"
        ));
    }
    tch::no_grad(|| {
        for (k, v) in &vars {
            v.shallow_clone().copy_(get(&format!("init.{k}"))?);
        }
        Ok::<(), String>(())
    })?;
    let err = |e: mobilenet::Error| format!("{name}: {e}");
    let (x, gy) = (get("x")?, get("gy")?);
    let mut out = Vec::new();
    forward_grad(&layer, x, gy, false, explicit, &mut out, "eval").map_err(err)?;
    if case["train"].as_bool() == Some(true) {
        forward_grad(&layer, x, gy, true, explicit, &mut out, "train").map_err(err)?;
        tch::no_grad(|| {
            for k in ["x2", "x3"] {
                let _ = layer.forward(get(k)?, true, explicit).map_err(err)?;
            }
            Ok::<(), String>(())
        })?;
        for k in ["running_mean", "running_var", "num_batches_tracked"] {
            if let Some(v) = vars.get(k) {
                out.push((format!("after.{k}"), v.copy()));
            }
        }
        let y = tch::no_grad(|| layer.forward(x, false, explicit)).map_err(err)?;
        out.push(("eval_after.y".into(), y));
    }
    Ok(out)
}

/// Runs every case of `layer` on both paths; panics listing the failures.
fn check_layer(layer: &str) {
    let idx = index();
    let cases: Vec<&Value> = idx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["layer"] == layer)
        .collect();
    assert!(
        !cases.is_empty(),
        "no {layer} cases in cases.json: run `make fixtures`"
    );
    let mut files: HashMap<String, HashMap<String, Tensor>> = HashMap::new();
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut worst = [0f64; 3]; // fused vs torch, explicit vs torch, fused vs explicit
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let file = case["file"].as_str().unwrap().to_string();
        let t = files
            .entry(file.clone())
            .or_insert_with(|| read_tensors(&format!("{file}.safetensors")));
        let fused = run_case(case, t, false);
        let explicit = run_case(case, t, true);
        let (fused, explicit) = match (fused, explicit) {
            (Ok(f), Ok(e)) => (f, e),
            (f, e) => {
                failures.extend(f.err());
                failures.extend(e.err());
                continue;
            }
        };
        // Every reference output of the case is produced, and compared.
        let produced: BTreeSet<&str> = fused.iter().map(|(k, _)| k.as_str()).collect();
        for k in t.keys().filter_map(|k| k.strip_prefix(&format!("{name}."))) {
            let is_output = ["eval.", "train.", "after.", "eval_after."]
                .iter()
                .any(|p| k.starts_with(p));
            if is_output && !produced.contains(k) {
                failures.push(format!("{name}: torch has {k}, rust did not produce it"));
            }
        }
        for ((k, f), (_, e)) in fused.iter().zip(&explicit) {
            let Some(torch) = t.get(&format!("{name}.{k}")) else {
                failures.push(format!(
                    "{name}: rust produced {k}, torch has no such output"
                ));
                continue;
            };
            if k == "after.num_batches_tracked" {
                for (path, v) in [("fused", f), ("explicit", e)] {
                    if v.kind() != Kind::Int64 || v.size() != torch.size() || v != torch {
                        failures.push(format!("{name} {path} {k}: {v:?} vs torch {torch:?}"));
                    }
                }
                continue;
            }
            let results = [
                compare(&format!("{name} fused {k}"), f, torch),
                compare(&format!("{name} explicit {k}"), e, torch),
                compare(&format!("{name} fused vs explicit {k}"), f, e),
            ];
            for (w, r) in worst.iter_mut().zip(results) {
                match r {
                    Ok(d) => *w = w.max(d),
                    Err(msg) => failures.push(msg),
                }
            }
            compared += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{layer}: {} failure(s) over {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(compared > 0);
    eprintln!(
        "{layer}: {} cases, {compared} tensors compared on both paths; max |diff|: fused vs torch \
         {:.2e}, explicit vs torch {:.2e}, fused vs explicit {:.2e}",
        cases.len(),
        worst[0],
        worst[1],
        worst[2]
    );
}

#[test]
fn batch_norm1d_matches_pytorch() {
    check_layer("batch_norm1d");
}

#[test]
fn batch_norm2d_matches_pytorch() {
    check_layer("batch_norm2d");
}

#[test]
fn instance_norm1d_matches_pytorch() {
    check_layer("instance_norm1d");
}

#[test]
fn instance_norm2d_matches_pytorch() {
    check_layer("instance_norm2d");
}

#[test]
fn layer_norm_matches_pytorch() {
    check_layer("layer_norm");
}

#[test]
fn group_norm_matches_pytorch() {
    check_layer("group_norm");
}

#[test]
fn norm_kind_build_matches_pytorch_modules() {
    check_layer("norm2d");
}

/// Loads a PyTorch state_dict (saved under `features.0.1.`) into a VarStore and reproduces the
/// eval output, on both paths.
fn check_state_dict(name: &str, build: impl Fn(&nn::Path) -> Layer) {
    let idx = index();
    let entry = &idx["state_dicts"][name];
    assert!(
        entry.is_object(),
        "no state dict {name} in cases.json: run `make fixtures`"
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().sub("features").sub("0").sub("1");
    let layer = build(&p);
    let have: BTreeSet<String> = vs.variables().keys().cloned().collect();
    let want: BTreeSet<String> = entry["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        have, want,
        "{name}: var-store names vs PyTorch state_dict keys"
    );
    let file = fixture_path(&format!("state_{name}.safetensors"));
    tch::no_grad(|| vs.read_safetensors(&file))
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let sd = read_tensors(&format!("state_{name}.safetensors"));
    for (k, v) in vs.variables() {
        assert_eq!(v.kind(), sd[&k].kind(), "{name}: kind of {k}");
        assert!(v == sd[&k], "{name}: {k} not loaded");
    }
    let io = read_tensors(&format!("state_{name}_io.safetensors"));
    for explicit in [false, true] {
        let y = layer.forward(&io["x"], false, explicit).unwrap();
        compare(
            &format!("{name} state_dict eval (explicit: {explicit})"),
            &y,
            &io["y"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn state_dicts_load_and_reproduce_eval_output() {
    check_state_dict("batch_norm2d", |p| {
        Layer::Bn(BatchNorm::new2d(p, 6, BatchNormConfig::default()).unwrap())
    });
    check_state_dict("batch_norm1d", |p| {
        let cfg = BatchNormConfig {
            momentum: None,
            ..Default::default()
        };
        Layer::Bn(BatchNorm::new1d(p, 5, cfg).unwrap())
    });
    check_state_dict("instance_norm2d", |p| {
        let cfg = InstanceNormConfig {
            affine: true,
            track_running_stats: true,
            ..Default::default()
        };
        Layer::In(InstanceNorm::new2d(p, 4, cfg).unwrap())
    });
    check_state_dict("instance_norm1d", |p| {
        let cfg = InstanceNormConfig {
            affine: true,
            ..Default::default()
        };
        Layer::In(InstanceNorm::new1d(p, 3, cfg).unwrap())
    });
    check_state_dict("layer_norm", |p| {
        Layer::Ln(LayerNorm::new(p, &[4, 3, 3], LayerNormConfig::default()).unwrap())
    });
    check_state_dict("group_norm", |p| {
        Layer::Gn(GroupNorm::new(p, 3, 6, GroupNormConfig::default()).unwrap())
    });
}

/// A folded batch norm (`x * scale + shift`) equals its eval output.
#[test]
fn batch_norm_eval_scale_shift_matches_eval_forward() {
    let vs = nn::VarStore::new(Device::Cpu);
    let bn = BatchNorm::new2d(&vs.root(), 6, BatchNormConfig::default()).unwrap();
    let file = fixture_path("state_batch_norm2d.safetensors");
    for (k, v) in Tensor::read_safetensors(&file).unwrap() {
        let k = k.strip_prefix("features.0.1.").unwrap().to_string();
        tch::no_grad(|| vs.variables()[&k].shallow_clone().copy_(&v));
    }
    let io = read_tensors("state_batch_norm2d_io.safetensors");
    let (scale, shift) = bn.eval_scale_shift().unwrap();
    let y = &io["x"] * scale.view([1, 6, 1, 1]) + shift.view([1, 6, 1, 1]);
    compare("folded batch norm", &y, &io["y"]).unwrap_or_else(|e| panic!("{e}"));
}
