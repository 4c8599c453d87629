//! The normalization layers' configuration, initial state and variable names match torch.nn's,
//! and `NormKind` parses, displays, serializes and works as a clap value.

use std::collections::BTreeSet;

use clap::Parser;
use mobilenet::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
    LayerNorm, LayerNormConfig, Norm2d, NormKind,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn names(vs: &VarStore) -> BTreeSet<String> {
    vs.variables().into_keys().collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn all_equal(t: &Tensor, v: f64) -> bool {
    t.eq(v).all().int64_value(&[]) == 1
}

#[test]
fn configs_have_torch_defaults() {
    let bn = BatchNormConfig::default();
    assert_eq!(
        (bn.eps, bn.momentum, bn.affine, bn.track_running_stats),
        (1e-5, Some(0.1), true, true)
    );
    let ln = LayerNormConfig::default();
    assert_eq!((ln.eps, ln.elementwise_affine, ln.bias), (1e-5, true, true));
    let inc = InstanceNormConfig::default();
    assert_eq!(
        (inc.eps, inc.momentum, inc.affine, inc.track_running_stats),
        (1e-5, Some(0.1), false, false)
    );
    let gn = GroupNormConfig::default();
    assert_eq!((gn.eps, gn.affine), (1e-5, true));
}

#[test]
fn batch_norm_initial_state_is_pytorchs() {
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNorm::new2d(&vs.root().sub("bn"), 5, BatchNormConfig::default()).unwrap();
    assert_eq!(
        names(&vs),
        set(&[
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked"
        ])
    );
    // Only weight and bias are trainable.
    assert_eq!(vs.trainable_variables().len(), 2);
    let w = bn.weight().unwrap();
    assert!(w.requires_grad() && all_equal(w, 1.0) && w.size() == [5]);
    assert!(all_equal(bn.bias().unwrap(), 0.0));
    let (rm, rv) = (bn.running_mean().unwrap(), bn.running_var().unwrap());
    assert!(!rm.requires_grad() && !rv.requires_grad());
    assert!(all_equal(rm, 0.0) && all_equal(rv, 1.0));
    let nbt = bn.num_batches_tracked().unwrap();
    assert_eq!((nbt.kind(), nbt.size()), (Kind::Int64, vec![]));
    assert_eq!(i64::try_from(nbt).unwrap(), 0);
    assert_eq!(bn.name(), "BatchNorm2d(5) at bn");
    assert_eq!(bn.config(), BatchNormConfig::default());

    // Training counts batches and moves the running stats; eval does not.
    let x = Tensor::randn([4, 5, 3, 3], (Kind::Float, Device::Cpu));
    let _ = bn.forward_t(&x, true);
    let _ = bn.forward_explicit(&x, true).unwrap();
    let _ = bn.forward_t(&x, false);
    assert_eq!(i64::try_from(nbt).unwrap(), 2);
    assert!(!all_equal(rm, 0.0));
    // `reset_running_stats` restores the initial buffers, as `_NormBase.reset_running_stats`.
    bn.reset_running_stats().unwrap();
    assert!(all_equal(rm, 0.0) && all_equal(rv, 1.0));
    assert_eq!(i64::try_from(nbt).unwrap(), 0);

    let vs = VarStore::new(Device::Cpu);
    let cfg = BatchNormConfig {
        affine: false,
        track_running_stats: false,
        ..Default::default()
    };
    let bn = BatchNorm::new1d(&vs.root(), 5, cfg).unwrap();
    assert!(names(&vs).is_empty());
    assert!(bn.weight().is_none() && bn.running_mean().is_none());
    assert!(bn.num_batches_tracked().is_none() && bn.spatial_dims() == 1);
    assert_eq!(bn.name(), "BatchNorm1d(5) at <root>");
}

#[test]
fn other_layers_register_pytorchs_names() {
    let vs = VarStore::new(Device::Cpu);
    let r = vs.root();
    InstanceNorm::new2d(&r.sub("in0"), 3, InstanceNormConfig::default()).unwrap();
    let cfg = InstanceNormConfig {
        affine: true,
        track_running_stats: true,
        ..Default::default()
    };
    let inorm = InstanceNorm::new1d(&r.sub("in1"), 3, cfg).unwrap();
    let ln0 = LayerNorm::new(&r.sub("ln0"), &[4, 2], LayerNormConfig::default()).unwrap();
    assert_eq!(ln0.normalized_shape(), [4, 2]);
    assert_eq!(ln0.weight().unwrap().size(), [4, 2]);
    assert_eq!(ln0.config(), LayerNormConfig::default());
    LayerNorm::new(
        &r.sub("ln1"),
        &[4],
        LayerNormConfig {
            bias: false,
            ..Default::default()
        },
    )
    .unwrap();
    let ln2 = LayerNormConfig {
        elementwise_affine: false,
        ..Default::default()
    };
    LayerNorm::new(&r.sub("ln2"), &[4], ln2).unwrap();
    GroupNorm::new(&r.sub("gn0"), 2, 4, GroupNormConfig::default()).unwrap();
    GroupNorm::new(
        &r.sub("gn1"),
        2,
        4,
        GroupNormConfig {
            affine: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        names(&vs),
        set(&[
            "in1.weight",
            "in1.bias",
            "in1.running_mean",
            "in1.running_var",
            "in1.num_batches_tracked",
            "ln0.weight",
            "ln0.bias",
            "ln1.weight",
            "gn0.weight",
            "gn0.bias",
        ])
    );
    let vars = vs.variables();
    assert_eq!(vars["ln0.weight"].size(), [4, 2]);
    assert!(all_equal(&vars["ln0.weight"], 1.0) && all_equal(&vars["ln0.bias"], 0.0));
    assert!(all_equal(&vars["gn0.weight"], 1.0) && all_equal(&vars["gn0.bias"], 0.0));
    assert!(all_equal(&vars["in1.running_var"], 1.0));
    // InstanceNorm, like PyTorch, never counts batches.
    let _ = inorm.forward_t(&Tensor::randn([2, 3, 5], (Kind::Float, Device::Cpu)), true);
    assert_eq!(i64::try_from(&vars["in1.num_batches_tracked"]).unwrap(), 0);
    assert!(!all_equal(&vars["in1.running_var"], 1.0));
    inorm.reset_running_stats().unwrap();
    assert!(all_equal(&vars["in1.running_var"], 1.0));
    assert_eq!(inorm.name(), "InstanceNorm1d(3) at in1");
}

#[test]
fn unbatched_instance_norm() {
    let vs = VarStore::new(Device::Cpu);
    let cfg = InstanceNormConfig {
        affine: true,
        ..Default::default()
    };
    let inorm = InstanceNorm::new2d(&vs.root(), 3, cfg).unwrap();
    let x = Tensor::randn([3, 4, 4], (Kind::Float, Device::Cpu));
    let y = inorm.f_forward_t(&x, true).unwrap();
    let yb = inorm.f_forward_t(&x.unsqueeze(0), true).unwrap();
    assert_eq!(y.size(), [3, 4, 4]);
    assert!(y.allclose(&yb.squeeze_dim(0), 1e-6, 1e-6, false));
    let ye = inorm.forward_explicit(&x, true).unwrap();
    assert!(y.allclose(&ye, 1e-5, 1e-5, false));
}

#[test]
fn norm_kind_parses_and_displays() {
    for (s, k) in [
        ("batch", NormKind::Batch),
        ("group:8", NormKind::Group(8)),
        ("group:1", NormKind::Group(1)),
        ("layer", NormKind::Layer),
        ("instance", NormKind::Instance),
    ] {
        let parsed: NormKind = s.parse().unwrap();
        assert_eq!(parsed, k);
        assert_eq!(k.to_string(), s);
        assert_eq!(k.to_string().parse::<NormKind>().unwrap(), k);
    }
    assert_eq!(" Group:4 ".parse::<NormKind>().unwrap(), NormKind::Group(4));
    assert_eq!(NormKind::default(), NormKind::Batch);
    for (bad, why) in [
        ("group:0", "positive integer"),
        ("group:-2", "positive integer"),
        ("group:x", "positive integer"),
        ("group:", "positive integer"),
        ("group", "group count"),
        ("groupnorm", "group count"),
        ("bn", "unknown norm"),
        ("", "unknown norm"),
    ] {
        let e = bad.parse::<NormKind>().unwrap_err().to_string();
        assert!(e.contains(why) && e.contains("norm"), "{bad:?}: {e}");
    }
    let e = "bn".parse::<NormKind>().unwrap_err().to_string();
    assert!(e.contains("batch, group:<G>"), "{e}");
}

#[derive(Parser, Debug)]
struct Cli {
    #[arg(long, default_value_t = NormKind::default())]
    norm: NormKind,
}

#[test]
fn norm_kind_is_a_clap_value() {
    assert_eq!(Cli::try_parse_from(["x"]).unwrap().norm, NormKind::Batch);
    assert_eq!(
        Cli::try_parse_from(["x", "--norm", "group:16"])
            .unwrap()
            .norm,
        NormKind::Group(16)
    );
    let e = Cli::try_parse_from(["x", "--norm", "group:0"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("positive integer"), "{e}");
}

#[test]
fn norm_kind_serializes_as_its_string() {
    assert_eq!(
        serde_json::to_string(&NormKind::Group(8)).unwrap(),
        "\"group:8\""
    );
    assert_eq!(
        serde_json::to_string(&NormKind::Instance).unwrap(),
        "\"instance\""
    );
    let k: NormKind = serde_json::from_str("\"layer\"").unwrap();
    assert_eq!(k, NormKind::Layer);
    assert!(serde_json::from_str::<NormKind>("\"group:0\"").is_err());
}

#[test]
fn norm_kind_builds_the_pytorch_equivalents() {
    let vs = VarStore::new(Device::Cpu);
    let r = vs.root();
    let bn = BatchNormConfig {
        eps: 1e-3,
        momentum: Some(0.01),
        ..Default::default()
    };
    let x = Tensor::randn([2, 8, 4, 4], (Kind::Float, Device::Cpu));

    let b = NormKind::Batch.build(&r.sub("b"), 8, bn).unwrap();
    let inner = b.as_batch_norm().expect("a batch norm");
    assert_eq!((inner.config(), inner.num_features()), (bn, 8));
    assert_eq!(inner.spatial_dims(), 2);

    match NormKind::Group(4).build(&r.sub("g"), 8, bn).unwrap() {
        Norm2d::Group(g) => assert_eq!(
            (g.num_groups(), g.num_channels(), g.config()),
            (4, 8, GroupNormConfig::default())
        ),
        other => panic!("{other:?}"),
    }
    let l = NormKind::Layer.build(&r.sub("l"), 8, bn).unwrap();
    match &l {
        Norm2d::Group(g) => {
            assert_eq!(
                (g.num_groups(), g.num_channels(), g.config().eps),
                (1, 8, 1e-5)
            )
        }
        other => panic!("{other:?}"),
    }
    // GroupNorm(1, C) normalizes each sample over (C, H, W).
    let y = l.forward_t(&x, false);
    let m = y.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
    assert!(m.abs().max().double_value(&[]) < 1e-5);
    let i = NormKind::Instance.build(&r.sub("i"), 8, bn).unwrap();
    match &i {
        Norm2d::Instance(n) => {
            let want = InstanceNormConfig {
                affine: true,
                ..Default::default()
            };
            assert_eq!((n.config(), n.spatial_dims()), (want, 2));
        }
        other => panic!("{other:?}"),
    }
    assert!(l.as_batch_norm().is_none() && i.as_batch_norm().is_none());
    assert_eq!(
        names(&vs),
        set(&[
            "b.weight",
            "b.bias",
            "b.running_mean",
            "b.running_var",
            "b.num_batches_tracked",
            "g.weight",
            "g.bias",
            "l.weight",
            "l.bias",
            "i.weight",
            "i.bias",
        ])
    );
    for n in [&b, &l, &i] {
        let y = n.f_forward_t(&x, true).unwrap();
        let ye = n.forward_explicit(&x, false).unwrap();
        assert_eq!((y.size(), ye.size()), (x.size(), x.size()));
    }
}
