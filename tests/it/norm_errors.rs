//! Bad input to the normalization layers is an `Err` that names the layer (type, feature count,
//! var-store path) and the shapes, checked before libtorch is called; never a panic or an abort
//! (except through `ModuleT::forward_t`, which panics with that message).

use mobilenet::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
    LayerNorm, LayerNormConfig, NormKind,
};
use tch::nn::{ModuleT, Path, VarStore};
use tch::{Device, Kind, Tensor};

fn x(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

fn at<'a>(vs: &'a VarStore) -> Path<'a> {
    vs.root().sub("features").sub("0").sub("1")
}

/// The error's message contains every one of `parts`.
fn assert_err<T: std::fmt::Debug>(r: mobilenet::Result<T>, parts: &[&str]) {
    let msg = match r {
        Ok(v) => panic!("expected an error containing {parts:?}, got Ok({v:?})"),
        Err(e) => e.to_string(),
    };
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not contain {p:?}");
    }
}

#[test]
fn batch_norm_wrong_rank() {
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNorm::new2d(&at(&vs), 4, BatchNormConfig::default()).unwrap();
    for train in [false, true] {
        assert_err(
            bn.f_forward_t(&x(&[4, 5, 5]), train),
            &["BatchNorm2d(4) at features.0.1", "4-D", "[4, 5, 5]"],
        );
        assert_err(
            bn.forward_explicit(&x(&[2, 4, 5, 5, 5]), train),
            &["BatchNorm2d(4)", "[2, 4, 5, 5, 5]"],
        );
    }
    let bn1 = BatchNorm::new1d(&vs.root().sub("bn1"), 4, BatchNormConfig::default()).unwrap();
    assert_err(
        bn1.f_forward_t(&x(&[2, 4, 3, 3]), true),
        &["BatchNorm1d(4) at bn1", "[2, 4, 3, 3]"],
    );
    assert_err(
        bn1.f_forward_t(&x(&[4]), true),
        &["BatchNorm1d(4) at bn1", "[4]"],
    );
}

#[test]
fn batch_norm_wrong_channels() {
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNorm::new2d(&at(&vs), 32, BatchNormConfig::default()).unwrap();
    for train in [false, true] {
        assert_err(
            bn.f_forward_t(&x(&[2, 16, 4, 4]), train),
            &[
                "BatchNorm2d(32) at features.0.1",
                "32 channels",
                "got 16",
                "[2, 16, 4, 4]",
            ],
        );
        assert_err(
            bn.forward_explicit(&x(&[2, 16, 4, 4]), train),
            &["BatchNorm2d(32)", "[2, 16, 4, 4]"],
        );
    }
    // Also without affine and running stats, where libtorch itself would not check.
    let cfg = BatchNormConfig {
        affine: false,
        track_running_stats: false,
        ..Default::default()
    };
    let bn = BatchNorm::new1d(&vs.root().sub("plain"), 3, cfg).unwrap();
    assert_err(
        bn.f_forward_t(&x(&[2, 5]), true),
        &["BatchNorm1d(3) at plain", "[2, 5]"],
    );
}

#[test]
fn batch_norm_one_value_per_channel_when_training() {
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNorm::new2d(&at(&vs), 4, BatchNormConfig::default()).unwrap();
    let msg = "Expected more than 1 value per channel when training, got input size [1, 4, 1, 1]";
    assert_err(
        bn.f_forward_t(&x(&[1, 4, 1, 1]), true),
        &["BatchNorm2d(4) at features.0.1", msg],
    );
    assert_err(bn.forward_explicit(&x(&[1, 4, 1, 1]), true), &[msg]);
    // Failed calls leave the running stats and the batch count alone.
    let nbt = bn.num_batches_tracked().unwrap();
    assert_eq!(i64::try_from(nbt).unwrap(), 0);
    // Eval with running stats is fine (PyTorch too); without running stats it is batch stats.
    assert!(bn.f_forward_t(&x(&[1, 4, 1, 1]), false).is_ok());
    let cfg = BatchNormConfig {
        track_running_stats: false,
        ..Default::default()
    };
    let bn = BatchNorm::new2d(&vs.root().sub("nostats"), 4, cfg).unwrap();
    assert_err(
        bn.f_forward_t(&x(&[1, 4, 1, 1]), false),
        &["BatchNorm2d(4) at nostats", msg],
    );
    let bn1 = BatchNorm::new1d(&vs.root().sub("bn1"), 4, BatchNormConfig::default()).unwrap();
    assert_err(
        bn1.f_forward_t(&x(&[1, 4]), true),
        &[
            "BatchNorm1d(4) at bn1",
            "more than 1 value per channel",
            "[1, 4]",
        ],
    );
    assert!(bn1.f_forward_t(&x(&[1, 4, 2]), true).is_ok());
}

#[test]
fn bad_config_is_an_error() {
    let vs = VarStore::new(Device::Cpu);
    let p = at(&vs);
    for eps in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
        let bn = BatchNormConfig {
            eps,
            ..Default::default()
        };
        assert_err(
            BatchNorm::new2d(&p, 4, bn),
            &["eps", "BatchNorm2d(4) at features.0.1"],
        );
        let inc = InstanceNormConfig {
            eps,
            ..Default::default()
        };
        assert_err(
            InstanceNorm::new1d(&p, 4, inc),
            &["eps", "InstanceNorm1d(4) at features.0.1"],
        );
        let lnc = LayerNormConfig {
            eps,
            ..Default::default()
        };
        assert_err(
            LayerNorm::new(&p, &[4], lnc),
            &["eps", "LayerNorm([4]) at features.0.1"],
        );
        let gnc = GroupNormConfig {
            eps,
            ..Default::default()
        };
        assert_err(
            GroupNorm::new(&p, 2, 4, gnc),
            &["eps", "GroupNorm(2, 4) at features.0.1"],
        );
    }
    for n in [0, -3] {
        assert_err(
            BatchNorm::new1d(&p, n, Default::default()),
            &["num_features", "BatchNorm1d"],
        );
        assert_err(
            InstanceNorm::new2d(&p, n, Default::default()),
            &["num_features", "InstanceNorm2d"],
        );
        assert_err(
            GroupNorm::new(&p, 1, n, Default::default()),
            &["num_channels", "GroupNorm"],
        );
        assert_err(
            GroupNorm::new(&p, n, 4, Default::default()),
            &["num_groups", "GroupNorm"],
        );
        assert_err(
            LayerNorm::new(&p, &[4, n], Default::default()),
            &["normalized_shape", "LayerNorm"],
        );
    }
    assert_err(
        LayerNorm::new(&p, &[], Default::default()),
        &["normalized_shape"],
    );
    assert_err(
        GroupNorm::new(&p, 5, 32, Default::default()),
        &[
            "GroupNorm(5, 32) at features.0.1",
            "num_channels (32) must be divisible by num_groups (5)",
        ],
    );
    // No variable was registered by the failed constructors.
    assert!(vs.variables().is_empty(), "{:?}", vs.variables().keys());
}

#[test]
fn instance_norm_bad_input() {
    let vs = VarStore::new(Device::Cpu);
    let cfg = InstanceNormConfig::default();
    let inorm = InstanceNorm::new2d(&at(&vs), 3, cfg).unwrap();
    assert_err(
        inorm.f_forward_t(&x(&[2, 3]), true),
        &["InstanceNorm2d(3) at features.0.1", "[2, 3]"],
    );
    assert_err(
        inorm.f_forward_t(&x(&[1, 2, 3, 4, 4]), true),
        &["InstanceNorm2d(3)", "[1, 2, 3, 4, 4]"],
    );
    // Channel mismatch is an error even without affine (PyTorch warns).
    assert_err(
        inorm.f_forward_t(&x(&[2, 5, 4, 4]), false),
        &[
            "InstanceNorm2d(3) at features.0.1",
            "3 channels",
            "got 5",
            "[2, 5, 4, 4]",
        ],
    );
    assert_err(
        inorm.forward_explicit(&x(&[5, 4, 4]), false),
        &["InstanceNorm2d(3)", "[5, 4, 4]"],
    );
    let msg = "Expected more than 1 spatial element when training, got input size [2, 3, 1, 1]";
    for train in [false, true] {
        // Without running stats eval mode uses the input's statistics too.
        assert_err(
            inorm.f_forward_t(&x(&[2, 3, 1, 1]), train),
            &["InstanceNorm2d(3)", msg],
        );
        assert_err(inorm.forward_explicit(&x(&[2, 3, 1, 1]), train), &[msg]);
    }
    let cfg = InstanceNormConfig {
        track_running_stats: true,
        ..Default::default()
    };
    let tracked = InstanceNorm::new1d(&vs.root().sub("in1"), 3, cfg).unwrap();
    assert_err(
        tracked.f_forward_t(&x(&[2, 3, 1]), true),
        &["InstanceNorm1d(3) at in1", "[2, 3, 1]"],
    );
    assert!(tracked.f_forward_t(&x(&[2, 3, 1]), false).is_ok());
    assert_err(
        tracked.f_forward_t(&x(&[2, 3, 4, 4]), false),
        &["InstanceNorm1d(3)", "[2, 3, 4, 4]"],
    );
}

#[test]
fn layer_norm_bad_input() {
    let vs = VarStore::new(Device::Cpu);
    let ln = LayerNorm::new(&at(&vs), &[4, 4], LayerNormConfig::default()).unwrap();
    for train in [false, true] {
        assert_err(
            ln.f_forward_t(&x(&[2, 3, 4, 5]), train),
            &[
                "LayerNorm([4, 4]) at features.0.1",
                "[4, 4]",
                "[2, 3, 4, 5]",
            ],
        );
        assert_err(
            ln.forward_explicit(&x(&[4]), train),
            &["LayerNorm([4, 4])", "[4]"],
        );
    }
    assert!(ln.f_forward_t(&x(&[4, 4]), true).is_ok());
}

#[test]
fn group_norm_bad_input() {
    let vs = VarStore::new(Device::Cpu);
    let gn = GroupNorm::new(&at(&vs), 2, 6, GroupNormConfig::default()).unwrap();
    assert_err(
        gn.f_forward_t(&x(&[6]), true),
        &["GroupNorm(2, 6) at features.0.1", "[6]"],
    );
    assert_err(
        gn.f_forward_t(&x(&[2, 4, 3, 3]), false),
        &[
            "GroupNorm(2, 6) at features.0.1",
            "6 channels",
            "got 4",
            "[2, 4, 3, 3]",
        ],
    );
    assert_err(
        gn.forward_explicit(&x(&[2, 4, 3, 3]), false),
        &["GroupNorm(2, 6)", "[2, 4, 3, 3]"],
    );
    let gn = GroupNorm::new(&vs.root().sub("gn"), 6, 6, GroupNormConfig::default()).unwrap();
    assert_err(
        gn.f_forward_t(&x(&[1, 6, 1, 1]), false),
        &["GroupNorm(6, 6) at gn", "more than 1 value", "[1, 6, 1, 1]"],
    );
}

#[test]
fn non_float_input_is_an_error() {
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNorm::new2d(&at(&vs), 3, BatchNormConfig::default()).unwrap();
    let xi = Tensor::ones([2, 3, 4, 4], (Kind::Int64, Device::Cpu));
    assert_err(
        bn.f_forward_t(&xi, true),
        &["BatchNorm2d(3)", "floating-point", "Int64"],
    );
    let gn = GroupNorm::new(&vs.root().sub("gn"), 1, 3, GroupNormConfig::default()).unwrap();
    assert_err(
        gn.f_forward_t(&xi, true),
        &["GroupNorm(1, 3)", "floating-point"],
    );
}

#[test]
fn norm2d_errors_name_the_layer() {
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNormConfig::default();
    assert_err(
        NormKind::Group(5).build(&at(&vs), 32, bn),
        &["GroupNorm(5, 32) at features.0.1", "divisible"],
    );
    for (kind, name) in [
        (NormKind::Batch, "BatchNorm2d(8) at k0"),
        (NormKind::Group(4), "GroupNorm(4, 8) at k1"),
        (NormKind::Layer, "GroupNorm(1, 8) at k2"),
        (NormKind::Instance, "InstanceNorm2d(8) at k3"),
    ] {
        let i = ["batch", "group", "layer", "instance"]
            .iter()
            .position(|k| kind.to_string().starts_with(k))
            .unwrap();
        let norm = kind.build(&vs.root().sub(format!("k{i}")), 8, bn).unwrap();
        assert_eq!(norm.name(), name);
        assert_err(
            norm.f_forward_t(&x(&[2, 7, 4, 4]), true),
            &[name, "[2, 7, 4, 4]"],
        );
        assert_err(
            norm.forward_explicit(&x(&[2, 7, 4, 4]), true),
            &[name, "[2, 7, 4, 4]"],
        );
    }
}

#[test]
#[should_panic(expected = "BatchNorm2d(4) at features.0.1: expected 4 channels (dim 1), got 3")]
fn module_t_forward_panics_with_the_message() {
    let vs = VarStore::new(Device::Cpu);
    let bn = BatchNorm::new2d(&at(&vs), 4, BatchNormConfig::default()).unwrap();
    let _ = bn.forward_t(&x(&[2, 3, 4, 4]), false);
}
