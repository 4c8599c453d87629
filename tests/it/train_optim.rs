//! SGD, AdamW, RMSprop and the learning-rate schedules against PyTorch (`fixtures/optim`, from
//! tests/gen_optim.py): five steps from the same parameters and gradients, each step's
//! parameters and state dict key for key (tensors within 1e-6 of their scale, numbers within
//! 1e-12); 20 epochs of learning rates (within 1e-12); torch's state loaded midway and carried
//! on; our own state written, loaded into a new optimizer and stepped identically.

use std::collections::HashMap;
use std::path::Path;

use mobilenet::train::{
    AdamW, AdamWOptions, Algorithm, Dict, Key, LrGroups, LrScheduler, Optimize, Optimizer,
    ParamGroup, RmsProp, RmsPropOptions, Rule, Scheduler, Sgd, SgdOptions, Value,
};
use serde_json::Value as Json;
use tch::{Kind, Tensor};

const TENSOR_TOL: f64 = 1e-6;
const NUMBER_TOL: f64 = 1e-12;

struct Fixture {
    manifest: Json,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Fixture {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/optim");
        let manifest = dir.join("manifest.json");
        assert!(
            manifest.exists(),
            "{} is missing: run `make fixtures`",
            manifest.display()
        );
        let manifest = serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
        let tensors = Tensor::read_safetensors(dir.join("tensors.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        Fixture { manifest, tensors }
    }

    fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("no tensor {key} in fixtures/optim"))
    }

    fn steps(&self) -> usize {
        self.manifest["steps"].as_u64().unwrap() as usize
    }

    /// Fresh leaf parameters holding `<prefix>.<i>`.
    fn params(&self, prefix: &str) -> Vec<Tensor> {
        let n = self.manifest["shapes"].as_array().unwrap().len();
        (0..n)
            .map(|i| {
                self.tensor(&format!("{prefix}.{i}"))
                    .copy()
                    .set_requires_grad(true)
            })
            .collect()
    }

    /// Gives the parameters step `step`'s gradients by a backward pass of `sum(p * g)`; the
    /// parameters without one at that step keep none.
    fn backward(&self, params: &[Tensor], step: usize) {
        let loss = params
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let g = self.tensors.get(&format!("grad.{step}.{i}"))?;
                Some((p * g).sum(Kind::Float))
            })
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
    }

    /// torch's state dict from the manifest as a [`Value`], tensors from the fixture.
    fn value(&self, j: &Json) -> Value {
        match j {
            Json::Null => Value::None,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => n
                .as_i64()
                .map_or(Value::Float(n.as_f64().unwrap()), Value::Int),
            Json::String(s) => Value::Str(s.clone()),
            Json::Array(a) => Value::List(a.iter().map(|x| self.value(x)).collect()),
            Json::Object(o) => match o.get("$tensor") {
                Some(key) => Value::Tensor(self.tensor(key.as_str().unwrap()).copy()),
                None => Value::Dict(
                    o.iter()
                        .map(|(k, v)| (json_key(k), self.value(v)))
                        .collect::<Dict>(),
                ),
            },
        }
    }

    /// Every difference between our value and torch's (from the manifest), by path.
    fn diff(&self, ours: &Value, torch: &Json, path: &str, out: &mut Vec<String>) {
        let mut mismatch = |what: String| out.push(format!("{path}: {what}"));
        match torch {
            Json::Object(o) if o.contains_key("$tensor") => match ours.as_tensor() {
                Some(t) => {
                    let key = o["$tensor"].as_str().unwrap();
                    if let Err(e) = close(t, self.tensor(key)) {
                        mismatch(e);
                    }
                }
                None => mismatch(format!("expected a tensor, got {ours:?}")),
            },
            Json::Object(o) => {
                let Some(d) = ours.as_dict() else {
                    return mismatch(format!("expected a dict, got {ours:?}"));
                };
                let ours_keys: Vec<Key> = d.entries().iter().map(|(k, _)| k.clone()).collect();
                let torch_keys: Vec<Key> = o.keys().map(|k| json_key(k)).collect();
                let missing: Vec<_> = torch_keys
                    .iter()
                    .filter(|k| !ours_keys.contains(k))
                    .collect();
                let extra: Vec<_> = ours_keys
                    .iter()
                    .filter(|k| !torch_keys.contains(k))
                    .collect();
                if !missing.is_empty() || !extra.is_empty() {
                    mismatch(format!("keys: missing {missing:?}, unexpected {extra:?}"));
                }
                for (k, v) in o {
                    if let Some(ours) = d.get(json_key(k)) {
                        self.diff(ours, v, &format!("{path}.{k}"), out);
                    }
                }
            }
            Json::Array(a) => match ours.as_seq() {
                Some(s) if s.len() == a.len() => {
                    for (i, (x, y)) in s.iter().zip(a).enumerate() {
                        self.diff(x, y, &format!("{path}[{i}]"), out);
                    }
                }
                _ => mismatch(format!("expected a sequence of {}, got {ours:?}", a.len())),
            },
            Json::Number(n) => match ours.as_f64() {
                Some(x) if number_close(x, n.as_f64().unwrap()) => {}
                _ => mismatch(format!("expected {n}, got {ours:?}")),
            },
            Json::Bool(b) if ours.as_bool() == Some(*b) => {}
            Json::Null if matches!(ours, Value::None) => {}
            Json::String(s) if matches!(ours, Value::Str(o) if o == s) => {}
            _ => mismatch(format!("expected {torch}, got {ours:?}")),
        }
    }

    fn optimizer_cases(&self) -> impl Iterator<Item = (&String, &Json)> {
        self.manifest["optimizers"].as_object().unwrap().iter()
    }

    fn schedule_cases(&self) -> impl Iterator<Item = (&String, &Json)> {
        self.manifest["schedules"].as_object().unwrap().iter()
    }
}

/// State dict keys: parameter indices are ints in torch, strings in JSON.
fn json_key(k: &str) -> Key {
    k.parse::<i64>().map_or_else(|_| Key::from(k), Key::Int)
}

fn number_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= NUMBER_TOL * b.abs().max(1.0)
}

/// `max |a - b| <= 1e-6 * max |b|`, naming the worst element otherwise.
fn close(ours: &Tensor, torch: &Tensor) -> Result<(), String> {
    if ours.size() != torch.size() {
        return Err(format!(
            "shape {:?}, torch's {:?}",
            ours.size(),
            torch.size()
        ));
    }
    let (a, b) = (
        ours.to_kind(Kind::Double).flatten(0, -1),
        torch.to_kind(Kind::Double).flatten(0, -1),
    );
    let scale = b
        .abs()
        .max()
        .double_value(&[])
        .max(f64::from(f32::MIN_POSITIVE));
    let diff = (&a - &b).abs();
    let worst = diff.argmax(0, false).int64_value(&[]);
    let max = diff.double_value(&[worst]);
    if max <= TENSOR_TOL * scale {
        Ok(())
    } else {
        Err(format!(
            "max |diff| {max:.3e} > {TENSOR_TOL} x scale {scale:.3e} at element {worst}: ours {}, \
             torch {}",
            a.double_value(&[worst]),
            b.double_value(&[worst])
        ))
    }
}

fn f(j: &Json, key: &str) -> Option<f64> {
    j.get(key).and_then(Json::as_f64)
}

fn b(j: &Json, key: &str) -> Option<bool> {
    j.get(key).and_then(Json::as_bool)
}

/// The case's groups over `params`, its options read by `options` (torch's defaults for what a
/// group leaves out).
fn groups<O>(
    fx: &Fixture,
    case: &Json,
    params: &[Tensor],
    options: impl Fn(&Json) -> O,
) -> Vec<ParamGroup<O>> {
    let ids = fx.manifest["groups"].as_array().unwrap();
    let opts = case["groups"].as_array().unwrap();
    ids.iter()
        .zip(opts)
        .map(|(ids, o)| {
            let params = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|i| params[i.as_u64().unwrap() as usize].shallow_clone())
                .collect();
            ParamGroup::new(
                params,
                f(o, "lr").unwrap(),
                f(o, "weight_decay").unwrap(),
                options(o),
            )
        })
        .collect()
}

/// The case's optimizer over `params`; with `defaults`, every group gets the class's default
/// options and lr 1 instead of the case's (to be replaced by a loaded state dict).
fn build(fx: &Fixture, case: &Json, params: &[Tensor], defaults: bool) -> Box<dyn Optimize> {
    fn make<A: Algorithm>(
        fx: &Fixture,
        case: &Json,
        params: &[Tensor],
        defaults: bool,
        options: impl Fn(&Json) -> A::Options,
    ) -> Box<dyn Optimize> {
        let mut groups = groups(fx, case, params, |o| {
            options(if defaults { &Json::Null } else { o })
        });
        if defaults {
            groups.iter_mut().for_each(|g| g.lr = 1.0);
        }
        Box::new(Optimizer::<A>::new(groups).unwrap())
    }
    let (fx, p, d) = (fx, params, defaults);
    match case["class"].as_str().unwrap() {
        "SGD" => make::<Sgd>(fx, case, p, d, |o| SgdOptions {
            momentum: f(o, "momentum").unwrap_or(0.0),
            dampening: f(o, "dampening").unwrap_or(0.0),
            nesterov: b(o, "nesterov").unwrap_or(false),
        }),
        "AdamW" => make::<AdamW>(fx, case, p, d, |o| {
            let d = AdamWOptions::default();
            let betas = o.get("betas").and_then(Json::as_array);
            let pair = |b: &Vec<Json>| (b[0].as_f64().unwrap(), b[1].as_f64().unwrap());
            AdamWOptions {
                betas: betas.map_or(d.betas, pair),
                eps: f(o, "eps").unwrap_or(d.eps),
                amsgrad: b(o, "amsgrad").unwrap_or(d.amsgrad),
            }
        }),
        "RMSprop" => make::<RmsProp>(fx, case, p, d, |o| {
            let d = RmsPropOptions::default();
            RmsPropOptions {
                alpha: f(o, "alpha").unwrap_or(d.alpha),
                eps: f(o, "eps").unwrap_or(d.eps),
                momentum: f(o, "momentum").unwrap_or(d.momentum),
                centered: b(o, "centered").unwrap_or(d.centered),
            }
        }),
        other => panic!("unknown optimizer class {other}"),
    }
}

/// One step as a training loop takes it: `zero_grad`, backward, `step`.
fn train_step(fx: &Fixture, opt: &mut dyn Optimize, params: &[Tensor], step: usize) {
    opt.zero_grad();
    fx.backward(params, step);
    opt.step().unwrap();
}

/// Our parameters and state dict after `step` against torch's, every difference listed.
fn compare_step(
    fx: &Fixture,
    name: &str,
    case: &Json,
    opt: &dyn Optimize,
    params: &[Tensor],
    step: usize,
    out: &mut Vec<String>,
) {
    for (i, p) in params.iter().enumerate() {
        if let Err(e) = close(p, fx.tensor(&format!("{name}.{step}.param.{i}"))) {
            out.push(format!("{name} step {step} param {i}: {e}"));
        }
    }
    let torch = &case["state_dicts"][step];
    fx.diff(
        &opt.state_dict(),
        torch,
        &format!("{name} step {step} state_dict"),
        out,
    );
}

fn assert_none(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn optimizers_match_pytorch_step_by_step() {
    let fx = Fixture::load();
    let mut failures = Vec::new();
    for (name, case) in fx.optimizer_cases() {
        let params = fx.params("init");
        let mut opt = build(&fx, case, &params, false);
        for step in 0..fx.steps() {
            train_step(&fx, opt.as_mut(), &params, step);
            compare_step(&fx, name, case, opt.as_ref(), &params, step, &mut failures);
        }
    }
    assert_none(failures);
}

#[test]
fn zero_grad_sets_gradients_to_none() {
    let fx = Fixture::load();
    let case = &fx.manifest["optimizers"]["sgd_momentum"];
    let params = fx.params("init");
    let opt = build(&fx, case, &params, false);
    fx.backward(&params, 1);
    assert!(params.iter().all(|p| p.grad().defined()));
    opt.zero_grad();
    assert!(params.iter().all(|p| !p.grad().defined()));
}

#[test]
fn pytorch_state_loads_and_carries_on() {
    let fx = Fixture::load();
    let mut failures = Vec::new();
    let resume = 1;
    for (name, case) in fx.optimizer_cases() {
        let params = fx.params(&format!("{name}.{resume}.param"));
        let mut opt = build(&fx, case, &params, true);
        opt.load_state_dict(&fx.value(&case["state_dicts"][resume]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        compare_step(
            &fx,
            name,
            case,
            opt.as_ref(),
            &params,
            resume,
            &mut failures,
        );
        for step in resume + 1..fx.steps() {
            train_step(&fx, opt.as_mut(), &params, step);
            compare_step(&fx, name, case, opt.as_ref(), &params, step, &mut failures);
        }
    }
    assert_none(failures);
}

/// Whether two values are the same tree with equal numbers and bit-equal tensors.
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Tensor(x), Value::Tensor(y)) => {
            x.size() == y.size() && x.kind() == y.kind() && x.equal(y)
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.entries()
                    .iter()
                    .zip(y.entries())
                    .all(|((kx, vx), (ky, vy))| kx == ky && identical(vx, vy))
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| identical(x, y))
        }
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::None, Value::None) => true,
        _ => false,
    }
}

#[test]
fn state_round_trip_steps_identically() {
    let fx = Fixture::load();
    for (name, case) in fx.optimizer_cases() {
        let params = fx.params("init");
        let mut first = build(&fx, case, &params, false);
        for step in 0..2 {
            train_step(&fx, first.as_mut(), &params, step);
        }
        let copies: Vec<Tensor> = params
            .iter()
            .map(|p| p.detach().copy().set_requires_grad(true))
            .collect();
        let mut second = build(&fx, case, &copies, true);
        second.load_state_dict(&first.state_dict()).unwrap();
        assert!(
            identical(&first.state_dict(), &second.state_dict()),
            "{name}: state dict changed through a round trip"
        );
        for step in 2..fx.steps() {
            train_step(&fx, first.as_mut(), &params, step);
            train_step(&fx, second.as_mut(), &copies, step);
            for (i, (p, q)) in params.iter().zip(&copies).enumerate() {
                assert!(
                    p.equal(q),
                    "{name} step {step}: param {i} differs after the round trip"
                );
            }
            assert!(
                identical(&first.state_dict(), &second.state_dict()),
                "{name} step {step}: states differ after the round trip"
            );
        }
    }
}

#[test]
fn mismatched_state_dicts_are_refused_and_change_nothing() {
    let fx = Fixture::load();
    let case = &fx.manifest["optimizers"]["adamw_amsgrad"];
    let params = fx.params("init");
    let mut opt = build(&fx, case, &params, false);
    train_step(&fx, opt.as_mut(), &params, 0);
    let before = opt.state_dict();
    let torch = |edit: &dyn Fn(&mut Json)| {
        let mut j = case["state_dicts"][0].clone();
        edit(&mut j);
        fx.value(&j)
    };
    let cases: [(&str, Value); 6] = [
        (
            "different number of parameter groups",
            torch(&|j| {
                j["param_groups"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "doesn't match the size",
            torch(&|j| {
                j["param_groups"][0]["params"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "shape [4, 3], but the parameter's is [3]",
            torch(&|j| {
                j["state"]["1"]["exp_avg"] = j["state"]["0"]["exp_avg"].clone();
            }),
        ),
        (
            "state[7]: no parameter group lists this id",
            torch(&|j| {
                j["state"]["7"] = j["state"]["0"].clone();
            }),
        ),
        (
            "`maximize`: only false is supported",
            torch(&|j| {
                j["param_groups"][1]["maximize"] = Json::Bool(true);
            }),
        ),
        (
            "missing key `max_exp_avg_sq`",
            torch(&|j| {
                j["state"]["3"]
                    .as_object_mut()
                    .unwrap()
                    .remove("max_exp_avg_sq");
            }),
        ),
    ];
    for (expected, bad) in cases {
        let err = opt.load_state_dict(&bad).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
        assert!(err.starts_with("invalid AdamW state dict"), "{err}");
        assert!(
            identical(&before, &opt.state_dict()),
            "a refused load changed the state"
        );
    }
    // An SGD state dict is not an AdamW one.
    let sgd = &fx.manifest["optimizers"]["sgd_momentum"]["state_dicts"][0];
    let err = opt.load_state_dict(&fx.value(sgd)).unwrap_err().to_string();
    assert!(err.contains("missing key `betas`"), "{err}");
}

/// A dummy optimizer with the schedules' two groups (lr 0.1 and 0.02).
fn schedule_optimizer() -> Optimizer<Sgd> {
    let group = |lr| {
        let p = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let momentum = SgdOptions {
            momentum: 0.9,
            ..Default::default()
        };
        ParamGroup::new(vec![p], lr, 0.0, momentum)
    };
    Optimizer::new(vec![group(0.1), group(0.02)]).unwrap()
}

fn rule(main: &Json) -> Rule {
    let i = |k| main[k].as_i64().unwrap();
    let x = |k| main[k].as_f64().unwrap();
    match main["class"].as_str().unwrap() {
        "StepLR" => Rule::Step {
            step_size: i("step_size"),
            gamma: x("gamma"),
        },
        "CosineAnnealingLR" => Rule::CosineAnnealing {
            t_max: i("T_max"),
            eta_min: x("eta_min"),
        },
        "LinearLR" => Rule::Linear {
            start_factor: x("start_factor"),
            end_factor: x("end_factor"),
            total_iters: i("total_iters"),
        },
        other => panic!("unknown scheduler {other}"),
    }
}

/// The case's schedule as torchvision's train.py builds it.
fn schedule(case: &Json, opt: &mut Optimizer<Sgd>) -> Scheduler {
    let main = rule(&case["main"]);
    match &case["warmup"] {
        Json::Null => Scheduler::Single(LrScheduler::new(main, opt).unwrap()),
        w => {
            let epochs = w["total_iters"].as_i64().unwrap();
            Scheduler::with_linear_warmup(main, epochs, w["start_factor"].as_f64().unwrap(), opt)
                .unwrap()
        }
    }
}

/// Steps epochs `from..=to` as the generator does (optimizer step, scheduler step, the lr set
/// by hand at its epoch), comparing each epoch's learning rates with torch's.
fn run_epochs(
    name: &str,
    case: &Json,
    opt: &mut Optimizer<Sgd>,
    sched: &mut Scheduler,
    from: usize,
    to: usize,
    out: &mut Vec<String>,
) {
    let hand_set = case["hand_set_epoch"].as_u64().map(|e| e as usize);
    for epoch in from..=to {
        opt.step().unwrap();
        sched.step(opt).unwrap();
        if hand_set == Some(epoch) {
            opt.set_lr(0, opt.lr(0) * 0.5);
        }
        compare_lrs(name, case, opt, epoch, out);
    }
}

fn compare_lrs(name: &str, case: &Json, opt: &Optimizer<Sgd>, epoch: usize, out: &mut Vec<String>) {
    let torch: Vec<f64> = case["lrs"][epoch]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let ours: Vec<f64> = (0..opt.group_count()).map(|g| opt.lr(g)).collect();
    if ours.len() != torch.len()
        || ours
            .iter()
            .zip(&torch)
            .any(|(a, b)| (a - b).abs() > NUMBER_TOL)
    {
        out.push(format!(
            "{name} epoch {epoch}: lr {ours:?}, torch {torch:?}"
        ));
    }
}

/// Runs `body` on each schedule case with a fresh optimizer and its schedule, as torchvision's
/// train.py builds them, then fails with every mismatch listed.
fn each_schedule(
    body: impl Fn(&Fixture, &str, &Json, &mut Optimizer<Sgd>, &mut Scheduler, &mut Vec<String>),
) {
    let fx = Fixture::load();
    let mut failures = Vec::new();
    for (name, case) in fx.schedule_cases() {
        let mut opt = schedule_optimizer();
        let mut sched = schedule(case, &mut opt);
        body(&fx, name, case, &mut opt, &mut sched, &mut failures);
    }
    assert_none(failures);
}

fn epochs(fx: &Fixture) -> usize {
    fx.manifest["epochs"].as_u64().unwrap() as usize
}

#[test]
fn schedules_match_pytorch_epoch_by_epoch() {
    each_schedule(|fx, name, case, opt, sched, failures| {
        compare_lrs(name, case, opt, 0, failures);
        run_epochs(name, case, opt, sched, 1, epochs(fx), failures);
        let what = format!("{name} scheduler");
        fx.diff(&sched.state_dict(), &case["state_dict"], &what, failures);
        let what = format!("{name} optimizer");
        fx.diff(&opt.state_dict(), &case["optimizer"], &what, failures);
    });
}

#[test]
fn schedules_resume_from_pytorch_state() {
    // torchvision's --resume: build both, load the optimizer's state, then the scheduler's.
    each_schedule(|fx, name, case, opt, sched, failures| {
        let resume = &case["resume"];
        opt.load_state_dict(&fx.value(&resume["optimizer"]))
            .unwrap();
        sched
            .load_state_dict(&fx.value(&resume["scheduler"]))
            .unwrap();
        let epoch = resume["epoch"].as_u64().unwrap() as usize;
        compare_lrs(name, case, opt, epoch, failures);
        run_epochs(name, case, opt, sched, epoch + 1, epochs(fx), failures);
    });
}

/// The hand-set case tells the recursive form (torch's `get_lr`) from the closed form: after
/// the lr is halved at epoch 5, torch's cosine continues from the halved value.
#[test]
fn cosine_steps_recursively() {
    let fx = Fixture::load();
    let case = &fx.manifest["schedules"]["cosine_by_hand"];
    let (t_max, eta_min) = (
        case["main"]["T_max"].as_f64().unwrap(),
        case["main"]["eta_min"].as_f64().unwrap(),
    );
    let closed =
        eta_min + (0.1 - eta_min) * (1.0 + (std::f64::consts::PI * 6.0 / t_max).cos()) / 2.0;
    let torch = case["lrs"][6][0].as_f64().unwrap();
    assert!(
        (torch - closed).abs() > 1e-3,
        "the fixture does not tell the two forms apart"
    );
    let mut opt = schedule_optimizer();
    let mut sched = schedule(case, &mut opt);
    let mut failures = Vec::new();
    run_epochs(
        "cosine_by_hand",
        case,
        &mut opt,
        &mut sched,
        1,
        6,
        &mut failures,
    );
    assert_none(failures);
}

/// The fixture's torchvision case uses the recipe's values, which `torchvision()` gives.
#[test]
fn rmsprop_torchvision_recipe() {
    let fx = Fixture::load();
    let group = &fx.manifest["optimizers"]["rmsprop_torchvision"]["groups"][0];
    let recipe = RmsPropOptions::torchvision(f(group, "momentum").unwrap());
    assert_eq!((recipe.alpha, recipe.eps), (0.9, 0.0316));
    assert_eq!(Some(recipe.alpha), f(group, "alpha"));
    assert_eq!(Some(recipe.eps), f(group, "eps"));
    assert!(!recipe.centered);
}
