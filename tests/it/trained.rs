//! bf16's decisions on trained models (fixtures/trained, tests/gen_trained.py): MobileNetV2 x0.5
//! and MobileNetV3 Small trained in PyTorch on scikit-learn's handwritten digits, whose logits
//! have the margins of a trained classifier (the seeded fixtures' top logits are near-ties, which
//! any rounding reorders). On the 360 validation digits, our bf16 model (the engine where the
//! CPU computes in bf16, the plain layer-by-layer bf16 path elsewhere) must pick our fp32
//! model's class for at least 99% of them.

use mobilenet::device::Precision;
use mobilenet::models::{Arch, Model, ModelConfig};
use mobilenet::parity;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

use crate::common::{Failures, Tol};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/trained")
}

fn top1(logits: &Tensor) -> Tensor {
    logits.to_kind(Kind::Float).argmax(1, false)
}

/// The share of positions where two class tensors agree.
fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    a.eq_tensor(b)
        .to_kind(Kind::Double)
        .mean(None)
        .double_value(&[])
}

#[test]
fn bf16_picks_the_fp32_class_on_trained_models() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("manifest.json")).unwrap()).unwrap();
    let data: std::collections::HashMap<String, Tensor> =
        mobilenet::weights::read(&fixtures().join("val.safetensors"))
            .unwrap()
            .tensors
            .into_iter()
            .collect();
    let (input, label) = (&data["input"], &data["label"]);
    let native = mobilenet::info::CpuIsa::detect().bf16_native();
    let mut f = Failures::new();
    let models = manifest["models"].as_object().unwrap();
    for (name, entry) in models {
        let cfg = ModelConfig {
            width_mult: entry["width_mult"].as_f64().unwrap(),
            num_classes: entry["num_classes"].as_i64().unwrap(),
            ..ModelConfig::new(Arch::from_name(entry["arch"].as_str().unwrap()).unwrap())
        };
        let weights = fixtures().join(entry["weights"].as_str().unwrap());
        // fp32 as `classify` runs it: folded, the engine.
        let mut fp32 = Model::load(cfg.clone(), &weights).unwrap();
        fp32.fold_batch_norm().unwrap();
        f.check(fp32.compile_engine().unwrap(), name, "no fp32 engine");
        let exact = tch::no_grad(|| fp32.f_forward_t(input, false)).unwrap();
        let d = parity::diff("fp32", &exact, &data[&format!("logits.{name}")]).unwrap();
        f.within(format!("{name} fp32 against PyTorch"), &d, Tol::Abs(1e-4));
        let accuracy = agreement(&top1(&exact), label);
        // A trained model: PyTorch measured its accuracy when it wrote the fixture.
        f.check(
            accuracy >= 0.9,
            name,
            format!("fp32 validation accuracy {accuracy:.4}: not a trained model"),
        );
        // bf16 as `classify --precision bf16` runs it (folded in fp32, cast, channels-last): the
        // engine where bf16 is native, and the plain layer-by-layer path everywhere.
        let bf16 = || {
            let mut m = Model::load(cfg.clone(), &weights).unwrap();
            m.fold_batch_norm().unwrap();
            m.to(Device::Cpu, Precision::Bf16).unwrap();
            m.set_channels_last(true).unwrap();
            m
        };
        let (plain, mut engine) = (bf16(), bf16());
        let built = engine.compile_engine().unwrap();
        f.check(
            built == native,
            name,
            format!("bf16 engine {built}, native {native}"),
        );
        let x = input.to_kind(Kind::BFloat16);
        let paths = [("plain", &plain), ("engine", &engine)];
        for (path, model) in paths.into_iter().filter(|(p, _)| *p == "plain" || built) {
            let got = tch::no_grad(|| model.f_forward_t(&x, false)).unwrap();
            let agree = agreement(&top1(&got), &top1(&exact));
            let d = parity::diff("bf16", &got, &exact).unwrap();
            println!(
                "{name}: fp32 accuracy {accuracy:.4}; bf16 ({path}) picks fp32's class on \
                 {:.2}% of {} digits; {d}",
                100.0 * agree,
                label.size()[0]
            );
            f.check(
                agree >= 0.99,
                format!("{name} {path}"),
                format!(
                    "bf16 agrees with fp32 on {:.2}% of the digits",
                    100.0 * agree
                ),
            );
            let tol = parity::Tolerance::for_precision(Precision::Bf16, false).logits;
            f.within(
                format!("{name} bf16 {path} against fp32"),
                &d,
                Tol::Rel(tol),
            );
        }
    }
    f.assert_none();
    assert!(models.len() >= 2, "only {} trained models", models.len());
}
