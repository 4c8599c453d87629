//! The inference fast paths change no result beyond float32 rounding: BatchNorm folded into the
//! convolutions and channels-last layout each equal the plain model within 1e-5 of the largest
//! logit (relative; PyTorch's own `fuse_conv_bn_eval` differs by the same amount on these
//! models: 6.3e-6 for V1, 6.4e-6 for V2, 3.8e-6 for V3 Large) and every stage's feature map
//! within 1e-4 relative, for every architecture; so does the fused oneDNN kernel
//! (`Model::accelerate`); a one-iteration smoke of `mobilenet bench`.
//! (No timing is asserted anywhere.)

use mobilenet::device::Precision;
use mobilenet::models::{Arch, Model, ModelConfig};
use mobilenet::parity::diff;
use std::process::Command;
use tch::{Device, Kind, Tensor};

use crate::common::{model_fixture as fixture, output_ok, BIN};

/// One seeded checkpoint per architecture.
const EVERY_ARCH: [(Arch, &str); 4] = [
    (Arch::MobilenetV1, "v1_100.safetensors"),
    (Arch::MobilenetV2, "v2_100.safetensors"),
    (Arch::MobilenetV3Large, "v3l_100.safetensors"),
    (Arch::MobilenetV3Small, "v3s_100.safetensors"),
];

fn load(arch: Arch, file: &str) -> Model {
    let cfg = ModelConfig::new(arch);
    Model::from_file(cfg, &fixture(file), Device::Cpu, Precision::Fp32).unwrap()
}

fn logits(model: &Model, x: &Tensor) -> Tensor {
    tch::no_grad(|| model.f_forward_t(x, false).unwrap())
}

/// Every stage's feature map and the logits of `model` against `plain`'s: the worst relative
/// difference (to each tensor's largest magnitude), so that an error early in the network
/// cannot hide behind a classifier that damps it.
fn worst_stage(model: &Model, plain: &Model, x: &Tensor) -> f64 {
    let (la, sa) = tch::no_grad(|| model.forward_with_stages(x, false, false).unwrap());
    let (lb, sb) = tch::no_grad(|| plain.forward_with_stages(x, false, false).unwrap());
    assert_eq!(sa.len(), sb.len());
    let mut worst = diff("logits", &la, &lb).unwrap().max_rel;
    for (a, b) in sa.iter().zip(&sb) {
        worst = worst.max(diff(&a.name, &a.tensor, &b.tensor).unwrap().max_rel);
    }
    worst
}

#[test]
fn folding_and_channels_last_are_exact() {
    for (arch, file) in EVERY_ARCH {
        let reference = load(arch, file);
        let mut model = load(arch, file);
        tch::manual_seed(7);
        let x = Tensor::randn([2, 3, 160, 160], (Kind::Float, Device::Cpu));
        let plain = logits(&model, &x);

        let folded = model.fold_batch_norm().unwrap();
        assert!(folded > 10, "{arch}: only {folded} BatchNorms folded");
        let d = diff("folded", &logits(&model, &x), &plain).unwrap();
        let stages = worst_stage(&model, &reference, &x);
        println!("{arch}: {d}; worst stage rel {stages:.2e}");
        assert!(d.max_rel <= 1e-5, "{arch}: {d}");
        assert!(
            stages <= 1e-4,
            "{arch}: folded stage maps differ by {stages:e} (relative)"
        );

        model.set_channels_last(true).unwrap();
        let d = diff("folded + channels-last", &logits(&model, &x), &plain).unwrap();
        let stages = worst_stage(&model, &reference, &x);
        println!("{arch}: {d}; worst stage rel {stages:.2e}");
        assert!(d.max_rel <= 1e-5, "{arch}: {d}");
        assert!(
            stages <= 1e-4,
            "{arch}: folded + NHWC stage maps differ by {stages:e}"
        );

        model.unfold_batch_norm();
        let d = diff("channels-last", &logits(&model, &x), &plain).unwrap();
        let stages = worst_stage(&model, &reference, &x);
        println!("{arch}: {d}; worst stage rel {stages:.2e}");
        assert!(d.max_rel <= 1e-5, "{arch}: {d}");
        assert!(
            stages <= 1e-4,
            "{arch}: NHWC stage maps differ by {stages:e}"
        );

        // A folded model refuses a train-mode forward (its folds would go stale).
        model.fold_batch_norm().unwrap();
        model.set_channels_last(false).unwrap();
        let err = tch::no_grad(|| model.f_forward_t(&x, true)).unwrap_err();
        assert!(err.to_string().contains("unfold_batch_norm"), "{err}");
    }
}

/// The fused oneDNN kernel (conv + activation, conv + residual add, weights reordered per input
/// size) against the plain model: logits within 1e-5 and stage maps within 1e-4 (relative), for
/// every architecture, on input sizes that come and go (the per-size weight cache), in NHWC and
/// in NCHW.
#[test]
fn fused_kernel_is_exact() {
    for (arch, file) in EVERY_ARCH {
        let reference = load(arch, file);
        let mut model = load(arch, file);
        assert_eq!(model.accelerate().unwrap(), 0, "{arch}: nothing folded yet");
        model.fold_batch_norm().unwrap();
        for channels_last in [true, false] {
            model.set_channels_last(channels_last).unwrap();
            let n = model.accelerate().unwrap();
            assert!(
                n > 10 && model.is_accelerated(),
                "{arch}: only {n} convs fused"
            );
            tch::manual_seed(11);
            for (batch, size) in [(1, 224), (3, 160), (1, 224), (2, 192), (5, 128), (3, 160)] {
                let x = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
                let plain = logits(&reference, &x);
                let d = diff("fused", &logits(&model, &x), &plain).unwrap();
                assert!(
                    d.max_rel <= 1e-5,
                    "{arch} NHWC {channels_last} {batch}x{size}: {d}"
                );
                let stages = worst_stage(&model, &reference, &x);
                assert!(
                    stages <= 1e-4,
                    "{arch} NHWC {channels_last} {batch}x{size}: stage maps differ by {stages:e}"
                );
            }
        }
        model.deaccelerate();
        assert!(!model.is_accelerated());
        let x = Tensor::randn([2, 3, 160, 160], (Kind::Float, Device::Cpu));
        let d = diff(
            "deaccelerated",
            &logits(&model, &x),
            &logits(&reference, &x),
        )
        .unwrap();
        assert!(d.max_rel <= 1e-5, "{arch}: {d}");
        // Casting (or refolding) drops the fused kernel, which holds fp32 CPU weights.
        model.accelerate().unwrap();
        model.to(Device::Cpu, Precision::Bf16).unwrap();
        assert!(!model.is_accelerated());
        let x = Tensor::randn([1, 3, 160, 160], (Kind::BFloat16, Device::Cpu));
        assert_eq!(logits(&model, &x).size(), [1, 1000]);
        // And a train-mode forward still goes through the plain layers.
        let mut model = load(arch, file);
        model.fold_batch_norm().unwrap();
        model.accelerate().unwrap();
        model.unfold_batch_norm();
        assert!(!model.is_accelerated());
        let x = Tensor::randn([2, 3, 160, 160], (Kind::Float, Device::Cpu));
        let d = diff("unfolded", &logits(&model, &x), &logits(&reference, &x)).unwrap();
        assert!(d.max_abs == 0.0, "{arch}: {d}");
    }
}

/// The oneDNN Graph compiled forward against the plain model: logits within 1e-5 of the
/// largest, across its profiling runs, other input shapes (the shape guards' fallback and new
/// specializations) and back. V3 is not compiled.
#[test]
fn graph_forward_is_exact() {
    for (arch, file) in EVERY_ARCH {
        let reference = load(arch, file);
        let mut model = load(arch, file);
        assert!(
            !model.compile_graph().unwrap(),
            "{arch}: compiled before folding"
        );
        model.fold_batch_norm().unwrap();
        model.set_channels_last(true).unwrap();
        model.accelerate().unwrap();
        mobilenet::ffi::enable_onednn_fusion(true);
        assert!(model.compile_graph().unwrap(), "{arch}");
        assert!(model.has_graph(), "{arch}");
        tch::manual_seed(5);
        for (batch, size) in [
            (1, 224),
            (1, 224),
            (1, 224),
            (1, 224),
            (1, 160),
            (2, 160),
            (1, 224),
        ] {
            let x = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
            let d = diff("graph", &logits(&model, &x), &logits(&reference, &x)).unwrap();
            assert!(d.max_rel <= 1e-5, "{arch} {batch}x{size}: {d}");
        }
        // Refolding (new weights) drops the compiled graph.
        model.fold_batch_norm().unwrap();
        assert!(!model.has_graph());
    }
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
    assert_eq!(v["graph"], true);
    assert_eq!(v["malloc_tuned"], true);
    assert_eq!(v["layout"], "nhwc");
    assert!(v["libtorch_version"]
        .as_str()
        .unwrap()
        .starts_with("2.11.0"));
    assert!(v["results"][0]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_rejects_bad_flags() {
    for args in [
        vec!["bench", "--batch-sizes", "0"],
        vec!["bench", "--iters", "0"],
        vec!["bench", "--device", "tpu"],
        vec!["bench", "--threads", "0"],
        vec!["bench", "--device", "cpu", "--precision", "fp16"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// fp16 on CUDA within the documented tolerance, when this machine has a GPU.
#[test]
fn cuda_fp16_within_tolerance_when_present() {
    if !tch::Cuda::is_available() {
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
    let x = Tensor::randn([4, 3, 224, 224], (Kind::Float, Device::Cpu));
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
    let w = Tensor::randn([8, 4, 3, 3], (Kind::Float, Device::Cpu));
    let b = Tensor::zeros([8], (Kind::Float, Device::Cpu));
    // 5 input channels against a weight made for 4.
    let x = Tensor::randn([1, 5, 16, 16], (Kind::Float, Device::Cpu));
    let err = tch::no_grad(|| conv_pointwise(&x, &w, Some(&b), g, relu6))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mkldnn::_convolution_pointwise"), "{err}");
    // A residual of the wrong shape.
    let x = Tensor::randn([1, 4, 16, 16], (Kind::Float, Device::Cpu));
    let other = Tensor::randn([1, 8, 15, 15], (Kind::Float, Device::Cpu));
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
/// compute ceiling written as JSON.
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
    assert_eq!(v["ours"]["graph"], true);
    let roofline = &v["roofline"];
    // torch's own FLOP count of V3 Small at 224: 2 x 56.8M multiply-adds, plus the few
    // non-conv FLOPs it counts.
    let gflop = roofline["model_gflop_per_image"].as_f64().unwrap();
    assert!((0.11..0.12).contains(&gflop), "{roofline}");
    assert!(
        roofline["matmul_gflops"].as_f64().unwrap() > 1.0,
        "{roofline}"
    );
    assert!(
        roofline["floor_ms_per_image"].as_f64().unwrap() > 0.0,
        "{roofline}"
    );
}
