//! The inference fast paths: BatchNorm folded into the convolutions, channels-last layout, the
//! fused oneDNN kernel (`Model::accelerate`) and the oneDNN Graph compiled forward
//! (`Model::compile_graph`); a one-iteration smoke of `mobilenet bench`. (No timing is asserted
//! anywhere.)
//!
//! Against PyTorch (`fixtures/models/*_eval_224.safetensors` from `weights/export.py`): every
//! path alone and combined, for every architecture: logits within the fp32 parity tolerance
//! (1e-4 absolute, identical top-5) and every stage's feature map within 1e-4 of its largest
//! magnitude (folding rounds differently: PyTorch's own `fuse_conv_bn_eval` puts its stage maps
//! 5.0e-5 (V1), 5.2e-5 (V2) and 7.3e-6 (V3 Large) from the unfolded model's, relative, and
//! V3 Large's logits 4.5e-5 absolute). The compiled graph and bf16 are held to PyTorch's numbers
//! in `models.rs`.
//!
//! Against our plain eager model, tighter and on other input sizes: folding, channels-last and
//! the fused kernel within 1e-5 of the largest logit (relative; PyTorch's own
//! `fuse_conv_bn_eval` differs by the same amount on these models: 6.3e-6 for V1, 6.4e-6 for
//! V2, 3.8e-6 for V3 Large) and every stage's feature map within 1e-4 relative; the compiled
//! graph's logits within 1e-5.

use mobilenet::device::Precision;
use mobilenet::models::{Arch, Dropout, Model, ModelConfig};
use mobilenet::parity::{self, diff, Diff};
use std::process::Command;
use tch::{Device, Kind, Tensor};

use crate::common::{model_fixture as fixture, normal, output_ok, Failures, Tol, BIN};

/// One seeded checkpoint per architecture.
const EVERY_ARCH: [(Arch, &str); 4] = [
    (Arch::MobilenetV1, "v1_100"),
    (Arch::MobilenetV2, "v2_100"),
    (Arch::MobilenetV3Large, "v3l_100"),
    (Arch::MobilenetV3Small, "v3s_100"),
];

fn load(arch: Arch, name: &str) -> Model {
    let cfg = ModelConfig::new(arch);
    let file = fixture(&format!("{name}.safetensors"));
    Model::from_file(cfg, &file, Device::Cpu, Precision::Fp32).unwrap()
}

fn logits(model: &Model, x: &Tensor) -> Tensor {
    tch::no_grad(|| model.f_forward_t(x, false).unwrap())
}

/// The top-5 class indices of every sample.
fn top5(logits: &Tensor) -> Vec<i64> {
    Vec::try_from(logits.topk(5, 1, true, true).1.view(-1)).unwrap()
}

/// Every stage's feature map and the logits of `model` against `plain`'s: the one with the
/// worst relative difference (to each tensor's largest magnitude), so that an error early in
/// the network cannot hide behind a classifier that damps it.
fn worst_stage(model: &Model, plain: &Model, x: &Tensor) -> Diff {
    let (la, sa) = tch::no_grad(|| model.forward_with_stages(x, false, Dropout::Off).unwrap());
    let (lb, sb) = tch::no_grad(|| plain.forward_with_stages(x, false, Dropout::Off).unwrap());
    assert_eq!(sa.len(), sb.len());
    let mut worst = diff("logits", &la, &lb).unwrap();
    for (a, b) in sa.iter().zip(&sb) {
        let d = diff(&a.name, &a.tensor, &b.tensor).unwrap();
        // NaN counts as the worst.
        if d.max_rel.is_nan() || d.max_rel > worst.max_rel {
            worst = d;
        }
    }
    worst
}

/// A combination of fast paths, switched on in this order on a freshly loaded fp32 model.
struct FastPath {
    name: &'static str,
    fold: bool,
    channels_last: bool,
    fuse: bool,
}

const FAST_PATHS: [FastPath; 5] = [
    FastPath {
        name: "folded",
        fold: true,
        channels_last: false,
        fuse: false,
    },
    FastPath {
        name: "channels-last",
        fold: false,
        channels_last: true,
        fuse: false,
    },
    FastPath {
        name: "folded + channels-last",
        fold: true,
        channels_last: true,
        fuse: false,
    },
    FastPath {
        name: "fused NCHW",
        fold: true,
        channels_last: false,
        fuse: true,
    },
    FastPath {
        name: "fused NHWC",
        fold: true,
        channels_last: true,
        fuse: true,
    },
];

/// Each fast path against PyTorch's eval logits and stage feature maps (224, batch 2) for every
/// architecture, within the tolerances of the module doc. Their tighter agreement with our plain
/// model is in the tests below.
#[test]
fn every_fast_path_matches_pytorch() {
    let tol = parity::Tolerance::for_precision(Precision::Fp32, false);
    let mut f = Failures::new();
    for (arch, name) in EVERY_ARCH {
        let path = fixture(&format!("{name}_eval_224.safetensors"));
        let reference = parity::read_reference(&path).unwrap();
        let (input, want) = (&reference["input"], &reference["logits"]);
        for p in &FAST_PATHS {
            let what = format!("{arch} {}", p.name);
            let mut model = load(arch, name);
            if p.fold {
                f.check(model.fold_batch_norm().unwrap() > 10, &what, "few folds");
            }
            model.set_channels_last(p.channels_last).unwrap();
            if p.fuse {
                f.check(model.accelerate().unwrap() > 10, &what, "few fused convs");
            }
            let got = logits(&model, input);
            let d = diff("logits", &got, want).unwrap();
            println!("{what}: {d}");
            f.within(&what, &d, Tol::Abs(tol.logits));
            f.check(top5(&got) == top5(want), &what, "top-5 differs");
            let (_, stages) = tch::no_grad(|| {
                model
                    .forward_with_stages(input, false, Dropout::Off)
                    .unwrap()
            });
            f.check(!stages.is_empty(), &what, "no stage maps");
            for stage in &stages {
                let want = &reference[&format!("feature.{}", stage.name)];
                let d = diff(&stage.name, &stage.tensor, want).unwrap();
                f.within(format!("{what} stage"), &d, Tol::Rel(1e-4));
            }
        }
    }
    f.assert_none();
}

#[test]
fn folding_and_channels_last_are_exact() {
    let mut f = Failures::new();
    for (arch, name) in EVERY_ARCH {
        let reference = load(arch, name);
        let mut model = load(arch, name);
        let x = normal(&[2, 3, 160, 160], 7);
        let plain = logits(&model, &x);

        let folded = model.fold_batch_norm().unwrap();
        f.check(
            folded > 10,
            arch,
            format!("only {folded} BatchNorms folded"),
        );
        let mut compare = |model: &Model, what: &str| {
            let d = diff(what, &logits(model, &x), &plain).unwrap();
            let stage = worst_stage(model, &reference, &x);
            println!("{arch}: {d}; worst stage {stage}");
            f.within(arch, &d, Tol::Rel(1e-5));
            f.within(format!("{arch} {what} worst stage"), &stage, Tol::Rel(1e-4));
        };
        compare(&model, "folded");
        model.set_channels_last(true).unwrap();
        compare(&model, "folded + channels-last");
        model.unfold_batch_norm();
        compare(&model, "channels-last");

        // A folded model refuses a train-mode forward (its folds would go stale).
        model.fold_batch_norm().unwrap();
        model.set_channels_last(false).unwrap();
        let err = tch::no_grad(|| model.f_forward_t(&x, true)).unwrap_err();
        f.check(
            err.to_string().contains("unfold_batch_norm"),
            arch,
            format!("train-mode forward of a folded model: {err}"),
        );
    }
    f.assert_none();
}

/// The fused oneDNN kernel (conv + activation, conv + residual add, weights reordered per input
/// size) against the plain model: logits within 1e-5 and stage maps within 1e-4 (relative), for
/// every architecture, on input sizes that come and go (the per-size weight cache), in NHWC and
/// in NCHW. Turning it off, casting to bf16 and unfolding each leave the plain layers' numbers.
#[test]
fn fused_kernel_is_exact() {
    let mut f = Failures::new();
    for (arch, name) in EVERY_ARCH {
        let reference = load(arch, name);
        let mut model = load(arch, name);
        f.check(
            model.accelerate().unwrap() == 0,
            arch,
            "fused before folding",
        );
        model.fold_batch_norm().unwrap();
        for channels_last in [true, false] {
            model.set_channels_last(channels_last).unwrap();
            let n = model.accelerate().unwrap();
            f.check(
                n > 10 && model.is_accelerated(),
                arch,
                format!("only {n} convs fused"),
            );
            let shapes = [(1, 224), (3, 160), (1, 224), (2, 192), (5, 128), (3, 160)];
            for (i, (batch, size)) in shapes.into_iter().enumerate() {
                let what = format!("{arch} NHWC {channels_last} {batch}x{size}");
                let x = normal(&[batch, 3, size, size], 1100 + i as u64);
                let plain = logits(&reference, &x);
                let d = diff("fused", &logits(&model, &x), &plain).unwrap();
                f.within(&what, &d, Tol::Rel(1e-5));
                let stage = worst_stage(&model, &reference, &x);
                f.within(format!("{what} worst stage"), &stage, Tol::Rel(1e-4));
            }
        }
        model.deaccelerate();
        assert!(!model.is_accelerated());
        let x = normal(&[2, 3, 160, 160], 13);
        let d = diff(
            "deaccelerated",
            &logits(&model, &x),
            &logits(&reference, &x),
        )
        .unwrap();
        f.within(arch, &d, Tol::Rel(1e-5));

        // Casting drops the fused kernel, which holds fp32 CPU weights: the bf16 forward is the
        // plain folded layers' in bf16, bit for bit, and within the bf16 tolerance of PyTorch.
        model.accelerate().unwrap();
        model.to(Device::Cpu, Precision::Bf16).unwrap();
        let mut never_fused = load(arch, name);
        never_fused.fold_batch_norm().unwrap();
        never_fused.to(Device::Cpu, Precision::Bf16).unwrap();
        let reference_file = fixture(&format!("{name}_eval_224.safetensors"));
        let torch = parity::read_reference(&reference_file).unwrap();
        let x = torch["input"].to_kind(Kind::BFloat16);
        let got = logits(&model, &x);
        let d = diff("bf16 after fused", &got, &logits(&never_fused, &x)).unwrap();
        f.within(arch, &d, Tol::Abs(0.0));
        let d = diff("bf16 after fused", &got, &torch["logits"]).unwrap();
        let tol = parity::Tolerance::for_precision(Precision::Bf16, false);
        println!("{arch}: {d}");
        f.within(
            format!("{arch} against PyTorch fp32"),
            &d,
            Tol::Rel(tol.logits),
        );

        // And unfolding goes back to the plain layers, exactly.
        let mut model = load(arch, name);
        model.fold_batch_norm().unwrap();
        model.accelerate().unwrap();
        model.unfold_batch_norm();
        assert!(!model.is_accelerated());
        let x = normal(&[2, 3, 160, 160], 13);
        let d = diff("unfolded", &logits(&model, &x), &logits(&reference, &x)).unwrap();
        f.within(arch, &d, Tol::Abs(0.0));
    }
    f.assert_none();
}

/// The oneDNN Graph compiled forward against the plain model: logits within 1e-5 of the
/// largest, across its profiling runs, other input shapes (the shape guards' fallback and new
/// specializations) and back, for every architecture.
#[test]
fn graph_forward_is_exact() {
    let mut f = Failures::new();
    for (arch, name) in EVERY_ARCH {
        let reference = load(arch, name);
        let mut model = load(arch, name);
        f.check(
            !model.compile_graph().unwrap(),
            arch,
            "compiled before folding",
        );
        model.fold_batch_norm().unwrap();
        model.set_channels_last(true).unwrap();
        model.accelerate().unwrap();
        mobilenet::ffi::enable_onednn_fusion(true);
        if !f.check(model.compile_graph().unwrap(), arch, "not compiled") {
            continue;
        }
        assert!(model.has_graph(), "{arch}");
        for (i, (batch, size)) in [
            (1, 224),
            (1, 224),
            (1, 224),
            (1, 224),
            (1, 160),
            (2, 160),
            (1, 224),
        ]
        .into_iter()
        .enumerate()
        {
            let x = normal(&[batch, 3, size, size], 500 + i as u64);
            let d = diff("graph", &logits(&model, &x), &logits(&reference, &x)).unwrap();
            f.within(format!("{arch} {batch}x{size}"), &d, Tol::Rel(1e-5));
        }
        // Refolding (new weights) drops the compiled graph.
        model.fold_batch_norm().unwrap();
        f.check(!model.has_graph(), arch, "graph kept after refolding");
    }
    f.assert_none();
}

/// The direct oneDNN engine against the plain model: logits within 1e-5 of the largest, for
/// every architecture, across batch sizes and input sizes (each shape builds its own
/// primitives; going back reuses them), with odd sizes where the layers' maps round down.
#[test]
fn engine_forward_is_exact() {
    assert!(
        mobilenet::ffi::engine_available(),
        "no engine: {}",
        mobilenet::ffi::engine_version()
    );
    let mut f = Failures::new();
    for (arch, name) in EVERY_ARCH {
        let reference = load(arch, name);
        let mut model = load(arch, name);
        f.check(
            !model.compile_engine().unwrap(),
            arch,
            "built before folding",
        );
        model.fold_batch_norm().unwrap();
        if !f.check(model.compile_engine().unwrap(), arch, "not built") {
            continue;
        }
        assert!(model.has_engine(), "{arch}");
        for (i, (batch, size)) in [(1, 224), (1, 224), (3, 224), (2, 161), (1, 97), (1, 224)]
            .into_iter()
            .enumerate()
        {
            let x = normal(&[batch, 3, size, size], 700 + i as u64);
            let d = diff("engine", &logits(&model, &x), &logits(&reference, &x)).unwrap();
            f.within(format!("{arch} {batch}x{size}"), &d, Tol::Rel(1e-5));
        }
        // Refolding (new weights) drops the engine; a bf16 model gets one only where the CPU
        // computes in bf16 (models.rs checks its numbers).
        model.fold_batch_norm().unwrap();
        f.check(!model.has_engine(), arch, "engine kept after refolding");
        model.to(Device::Cpu, Precision::Bf16).unwrap();
        let native = mobilenet::info::CpuIsa::detect().bf16_native();
        f.check(
            model.compile_engine().unwrap() == native,
            arch,
            format!("bf16 engine built where bf16 is native ({native}) or not"),
        );
    }
    f.assert_none();
}

/// The engine runs a batch as one or two images at a time per thread (lanes,
/// src/ffi/engine.cpp), and the images left over on all threads: every image's logits are bit
/// for bit those it gets alone.
#[test]
fn engine_batch_equals_each_image_alone() {
    let mut f = Failures::new();
    for (arch, name) in [EVERY_ARCH[0], EVERY_ARCH[3]] {
        let mut model = load(arch, name);
        model.fold_batch_norm().unwrap();
        assert!(model.compile_engine().unwrap(), "{arch}");
        // 5 on two threads: two images per lane (V1 one at a time, V3 Small two per step), one
        // left over.
        let x = normal(&[5, 3, 224, 224], 900);
        let batch = logits(&model, &x);
        for i in 0..5 {
            let alone = logits(&model, &x.narrow(0, i, 1));
            f.check(
                batch.narrow(0, i, 1).equal(&alone),
                arch,
                format!("image {i} of 5 differs from its logits alone"),
            );
        }
    }
    f.assert_none();
}

/// The engine's lanes for the caller's own threads (`Engine::lanes`, what `classify` runs):
/// images through one-image trunks on two threads of ours, in whatever order the threads take
/// them, then the head for the batch, give the batched forward's logits bit for bit; a lane
/// refuses values of the wrong size; the lanes are given out once.
#[test]
fn engine_lanes_on_our_threads_equal_the_batch() {
    let mut f = Failures::new();
    for (arch, name) in [EVERY_ARCH[1], EVERY_ARCH[3]] {
        let mut model = load(arch, name);
        model.fold_batch_norm().unwrap();
        assert!(model.compile_engine().unwrap(), "{arch}");
        let engine = model.engine().unwrap();
        let x = normal(&[5, 3, 224, 224], 910);
        let batch = logits(&model, &x);
        let lanes = engine
            .lanes(2, 224, 224)
            .unwrap()
            .expect("lanes in this build");
        let c = lanes.channels();
        let images: Vec<Vec<f32>> = (0..5)
            .map(|i| Vec::<f32>::try_from(x.get(i).flatten(0, -1)).unwrap())
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut pooled = vec![vec![0f32; c]; 5];
        let slots: Vec<std::sync::Mutex<&mut Vec<f32>>> =
            pooled.iter_mut().map(std::sync::Mutex::new).collect();
        let mut taken = lanes.take();
        assert_eq!(taken.len(), 2, "{arch}");
        assert!(lanes.take().is_empty(), "{arch}: lanes given out twice");
        let mut wrong = vec![0f32; c + 1];
        assert!(taken[0].run(&images[0], &mut wrong).is_err(), "{arch}");
        assert!(
            taken[0].run(&images[0][1..], &mut wrong[..c]).is_err(),
            "{arch}"
        );
        std::thread::scope(|s| {
            for mut lane in taken {
                let (next, images, slots) = (&next, &images, &slots);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= images.len() {
                        break;
                    }
                    let mut out = vec![0f32; c];
                    lane.run(&images[i], &mut out).unwrap();
                    **slots[i].lock().unwrap() = out;
                });
            }
        });
        drop(slots);
        let head = lanes.head(&pooled.concat()).unwrap();
        f.check(
            head.equal(&batch),
            arch,
            format!(
                "lanes then head differ from the batch by {}",
                (&head - &batch).abs().max().double_value(&[])
            ),
        );
        assert!(lanes.head(&pooled.concat()[1..]).is_err(), "{arch}");
    }
    f.assert_none();
}

#[test]
fn non_batch_norms_are_left_unfolded() {
    let cfg = ModelConfig {
        norm: "group:8".parse().unwrap(),
        ..ModelConfig::new(Arch::MobilenetV2)
    };
    let mut model = Model::new(cfg, Device::Cpu).unwrap();
    assert_eq!(model.fold_batch_norm().unwrap(), 0);
    assert!(!model.is_folded());
    // Not folded: a train-mode forward (which a folded model refuses) still runs.
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    assert!(model.f_forward_t(&x, true).is_ok());
}

#[test]
fn bench_smoke_one_iteration() {
    let out = output_ok(Command::new(BIN).args([
        "bench",
        "--arch",
        "mobilenet_v2",
        "--device",
        "cpu",
        "--batch-sizes",
        "1,2",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(v["bn_folded"], true);
    assert_eq!(v["fused"], true);
    // The engine runs the forward; the graph is not compiled beside it.
    assert_eq!(v["engine"], true);
    assert_eq!(v["graph"], false);
    assert!(v["engine_onednn"]
        .as_str()
        .unwrap()
        .starts_with("oneDNN 3."));
    assert_eq!(v["malloc_tuned"], true);
    assert_eq!(v["layout"], "nhwc");
    assert!(v["libtorch_version"]
        .as_str()
        .unwrap()
        .starts_with("2.11.0"));
    assert!(v["results"][0]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(v["results"][0]["cpu_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_rejects_bad_flags() {
    let mut f = Failures::new();
    for args in [
        vec!["bench", "--batch-sizes", "0"],
        vec!["bench", "--iters", "0"],
        vec!["bench", "--device", "tpu"],
        vec!["bench", "--threads", "0"],
        vec!["bench", "--device", "cpu", "--precision", "fp16"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let ok = out.status.code() == Some(2) && !err.contains("panicked");
        f.check(ok, format!("{args:?}"), format!("{:?}: {err}", out.status));
    }
    f.assert_none();
}

/// fp16 on CUDA within the documented tolerance, when this machine has a GPU.
#[test]
fn cuda_fp16_within_tolerance_when_present() {
    if !mobilenet::device::cuda_is_available() {
        println!("no CUDA device: fp16 check skipped");
        return;
    }
    let cfg = ModelConfig::new(Arch::MobilenetV2);
    let file = fixture("v2_100.safetensors");
    let cpu = Model::from_file(cfg.clone(), &file, Device::Cpu, Precision::Fp32).unwrap();
    let mut gpu = Model::load(cfg, &file).unwrap();
    gpu.fold_batch_norm().unwrap();
    gpu.to(Device::Cuda(0), Precision::Fp16).unwrap();
    gpu.set_channels_last(true).unwrap();
    let x = normal(&[4, 3, 224, 224], 17);
    let want = logits(&cpu, &x);
    let got = logits(&gpu, &x.to_device(Device::Cuda(0)).to_kind(Kind::Half));
    let d = diff("fp16 cuda", &got, &want).unwrap();
    println!("{d}");
    assert!(d.max_rel <= 2.5e-2, "{d}");
}

/// A C++ exception inside the fused kernel comes back as an error naming the op, not an abort.
#[test]
fn fused_kernel_errors_are_errors() {
    use mobilenet::ffi::{conv_pointwise, conv_pointwise_add, ConvGeometry};
    let relu6 = mobilenet::nn::Activation::Relu6.onednn_post_op().unwrap();
    // The pinned PyTorch wheel is built with oneDNN.
    assert!(mobilenet::ffi::conv_pointwise_available());
    let g = ConvGeometry {
        padding: 1,
        stride: 1,
        dilation: 1,
        groups: 1,
    };
    let w = normal(&[8, 4, 3, 3], 19);
    let b = Tensor::zeros([8], (Kind::Float, Device::Cpu));
    // 5 input channels against a weight made for 4.
    let x = normal(&[1, 5, 16, 16], 23);
    let err = tch::no_grad(|| conv_pointwise(&x, &w, Some(&b), g, relu6))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mkldnn::_convolution_pointwise"), "{err}");
    // A residual of the wrong shape.
    let x = normal(&[1, 4, 16, 16], 29);
    let other = normal(&[1, 8, 15, 15], 31);
    let err = tch::no_grad(|| conv_pointwise_add(&x, &other, &w, Some(&b), g))
        .unwrap_err()
        .to_string();
    assert!(err.contains("_convolution_pointwise.binary"), "{err}");
    // The right shapes work and match conv2d + clamp.
    let ours = tch::no_grad(|| conv_pointwise(&x, &w, Some(&b), g, relu6)).unwrap();
    let plain = x
        .conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1)
        .clamp(0.0, 6.0);
    let d = diff("conv_pointwise", &ours, &plain).unwrap();
    assert!(d.max_rel <= 1e-6, "{d}");
    // An accelerated model still names the layer for a wrong input.
    let mut model = Model::new(ModelConfig::new(Arch::MobilenetV2), Device::Cpu).unwrap();
    model.fold_batch_norm().unwrap();
    model.accelerate().unwrap();
    let x = Tensor::randn([1, 4, 64, 64], (Kind::Float, Device::Cpu));
    let err = tch::no_grad(|| model.f_forward_t(&x, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[N, 3, H, W]"), "{err}");
}

#[test]
fn malloc_settings_take_on_glibc() {
    let took = mobilenet::alloc::keep_freed_memory();
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(took, "mallopt refused M_MMAP_MAX / M_TRIM_THRESHOLD");
    } else {
        assert!(!took);
    }
}

/// `make bench`'s comparison script end to end, one iteration and no ONNX Runtime (which it
/// would install): every implementation timed on the same seeded weights, the ratios and the
/// compute ceiling written as JSON, then ours and PyTorch in bf16, labelled native or emulated
/// as /proc/cpuinfo says.
#[test]
fn comparison_script_smoke() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("bench-compare-{}.json", std::process::id()));
    output_ok(
        Command::new(root.join(".venv/bin/python3"))
            .arg(root.join("scripts/bench_compare.py"))
            .args([
                "--arch",
                "mobilenet_v3_small",
                "--batch-sizes",
                "1",
                "--rounds",
                "1",
                "--iters",
                "1",
                "--warmup",
                "0",
                "--skip-ort",
                "--precisions",
                "fp32,bf16",
                "--bf16-iters",
                "1",
                "--binary",
                BIN,
                "--out",
            ])
            .arg(&out),
    );
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = v["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            assert!(row["p50_ms"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["ours_over_theirs"].as_f64().unwrap() > 0.0, "{row}");
            row["implementation"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "mobilenet (ours)",
            "pytorch eager",
            "pytorch eager channels-last",
            "torchscript optimize_for_inference",
            "pytorch eager channels-last, malloc as ours",
        ]
    );
    assert_eq!(v["ours"]["engine"], true);
    let roofline = &v["roofline"];
    // torch's own FLOP count of V3 Small at 224: 2 x 56.8M multiply-adds, plus the few
    // non-conv FLOPs it counts.
    let gflop = roofline["model_gflop_per_image"].as_f64().unwrap();
    assert!((0.11..0.12).contains(&gflop), "{roofline}");
    // The ceiling is the larger of the ISA's peak and the best GEMM, and nothing exceeds it.
    let ceiling = roofline["ceiling_gflops"].as_f64().unwrap();
    assert!(
        ceiling >= roofline["gemm_gflops"].as_f64().unwrap() && ceiling > 1.0,
        "{roofline}"
    );
    assert!(
        roofline["isa_peak"]["flop_per_cycle_per_core"]
            .as_i64()
            .unwrap()
            >= 8,
        "{roofline}"
    );
    if let Some(isa) = roofline["isa_peak"]["gflops"].as_f64() {
        assert!(ceiling >= isa, "{roofline}");
    }
    assert_eq!(roofline["ceiling_exceeded_by"], serde_json::json!([]));
    let share = roofline["ours_share_of_ceiling"]["1"].as_f64().unwrap();
    assert!(share > 0.0 && share <= 1.0, "{roofline}");
    assert!(
        roofline["floor_ms_per_image"].as_f64().unwrap() > 0.0,
        "{roofline}"
    );

    let bf16 = &v["bf16"];
    let (_, native) = crate::info::cpu_flags();
    assert_eq!(bf16["native"], native, "{bf16}");
    let compute = if native { "native" } else { "emulated" };
    assert_eq!(bf16["ours_bf16_compute"], compute, "{bf16}");
    let names: Vec<&str> = bf16["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            assert!(row["p50_ms"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["over_ours_fp32"].as_f64().unwrap() > 0.0, "{row}");
            // No ONNX Runtime in this run: nothing to hold bf16 against, and no verdicts.
            assert!(row["over_ort_fp32"].is_null(), "{row}");
            row["implementation"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["mobilenet (ours) bf16", "pytorch eager channels-last bf16"]
    );
    assert!(v["targets"].is_null(), "{}", v["targets"]);
}
