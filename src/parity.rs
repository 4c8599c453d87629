//! Numerical parity with PyTorch: runs a model on a reference's `input` and compares logits,
//! top-k, stage feature maps and (train mode) the running statistics with what PyTorch computed.
//!
//! A reference is a safetensors file written by `weights/export.py reference`: `input`
//! `[N, 3, H, W]` f32, `logits` `[N, K]` f32, optionally `feature.<stage>` feature maps and, in
//! train mode, `state.<key>` buffers after the forward.

use crate::device::Precision;
use crate::models::{Dropout, Model, StageOutput};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Tolerances of a parity check.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tolerance {
    /// Largest allowed `max |ours - torch|` of the logits, relative to `max |torch logits|` for
    /// reduced precision and absolute for fp32.
    pub logits: f64,
    pub relative: bool,
    /// How many leading top-k indices must be identical per sample (5 for fp32, 1 otherwise).
    pub top_k: i64,
}

impl Tolerance {
    /// fp32: max abs logit error <= 1e-4 and identical top-5.
    ///
    /// Reduced precision against PyTorch in the same precision (`like_for_like`, the reference
    /// has `logits.fp16` / `logits.bf16`): max error <= 1% (fp16) or 4% (bf16) of the largest
    /// logit, identical top-1. Against PyTorch's fp32 logits: 2.5% (fp16) or 10% (bf16), where
    /// the rounding of every layer adds up; identical top-1.
    pub fn for_precision(p: Precision, like_for_like: bool) -> Tolerance {
        let logits = match (p, like_for_like) {
            (Precision::Fp32, _) => {
                return Tolerance {
                    logits: 1e-4,
                    relative: false,
                    top_k: 5,
                }
            }
            (Precision::Fp16, true) => 1e-2,
            (Precision::Bf16, true) => 4e-2,
            (Precision::Fp16, false) => 2.5e-2,
            (Precision::Bf16, false) => 1e-1,
        };
        Tolerance {
            logits,
            relative: true,
            top_k: 1,
        }
    }
}

/// The worst difference between two tensors.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub name: String,
    pub max_abs: f64,
    /// `max_abs / max |reference|`.
    pub max_rel: f64,
    /// Flat index of the worst element and both values there.
    pub worst_index: i64,
    pub ours: f64,
    pub reference: f64,
}

/// Compares `ours` with `reference` (both converted to f64 on the CPU).
pub fn diff(name: &str, ours: &Tensor, reference: &Tensor) -> Result<Diff> {
    if ours.size() != reference.size() {
        return Err(Error::bad_input(
            name,
            format!(
                "shape {:?} differs from the reference's {:?}",
                ours.size(),
                reference.size()
            ),
        ));
    }
    let a = ours
        .f_to_kind(Kind::Double)?
        .f_to_device(tch::Device::Cpu)?
        .f_flatten(0, -1)?;
    let b = reference
        .f_to_kind(Kind::Double)?
        .f_to_device(tch::Device::Cpu)?
        .f_flatten(0, -1)?;
    if a.numel() == 0 {
        return Ok(Diff {
            name: name.into(),
            max_abs: 0.0,
            max_rel: 0.0,
            worst_index: 0,
            ours: 0.0,
            reference: 0.0,
        });
    }
    let d = (&a - &b).f_abs()?;
    let worst = d.f_argmax(0, false)?.f_int64_value(&[])?;
    let max_abs = d.f_double_value(&[worst])?;
    let scale = b.f_abs()?.f_max()?.f_double_value(&[])?;
    Ok(Diff {
        name: name.into(),
        max_abs,
        max_rel: if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        },
        worst_index: worst,
        ours: a.f_double_value(&[worst])?,
        reference: b.f_double_value(&[worst])?,
    })
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: max abs {:.3e} (rel {:.3e}) at flat index {}: ours {:.7} vs torch {:.7}",
            self.name, self.max_abs, self.max_rel, self.worst_index, self.ours, self.reference
        )
    }
}

/// The outcome of a parity run.
#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    pub mode: String,
    pub precision: Precision,
    pub device: String,
    /// Which reference tensor the logits were compared with: `logits` (PyTorch in fp32) or,
    /// for a reduced precision when the reference has it, `logits.fp16` / `logits.bf16`
    /// (PyTorch in that precision, like for like).
    pub compared_with: String,
    pub logits: Diff,
    /// Reduced precision compared like for like: the distance to PyTorch's fp32 logits too.
    pub vs_fp32: Option<Diff>,
    /// Samples whose top-1 index agrees with PyTorch's, out of `samples`.
    pub top1_agree: i64,
    /// Samples whose top-5 indices (in order) agree with PyTorch's.
    pub top5_agree: i64,
    pub samples: i64,
    /// Stage feature maps, in order, where the reference has them.
    pub stages: Vec<Diff>,
    /// The worst running-statistics buffer after a train-mode forward.
    pub worst_buffer: Option<Diff>,
    pub tolerance: Tolerance,
    pub pass: bool,
}

/// Reads a reference file into a map, checking `input` and `logits` are there. It is read as
/// weight files are ([`crate::weights::read`]: a regular file of bounded size, every header
/// and offset checked).
pub fn read_reference(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = crate::weights::read(path)?.tensors;
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    for key in ["input", "logits"] {
        if !map.contains_key(key) {
            return Err(Error::file(
                path,
                format!("reference has no `{key}` tensor"),
            ));
        }
    }
    let input = &map["input"];
    let logits = &map["logits"];
    if input.dim() != 4 || input.size()[1] != 3 {
        return Err(Error::file(
            path,
            format!("`input` is {:?}, not [N, 3, H, W]", input.size()),
        ));
    }
    if input.size()[0] == 0 {
        return Err(Error::file(
            path,
            "reference has no samples (`input` has N = 0)",
        ));
    }
    for key in ["logits", "logits.fp16", "logits.bf16"] {
        let Some(l) = map.get(key) else { continue };
        if l.dim() != 2 || l.size()[0] != input.size()[0] || l.size()[1] != logits.size()[1] {
            return Err(Error::file(
                path,
                format!(
                    "`{key}` is {:?}, not [N, K] for N = {} and K = {} (from `logits`)",
                    l.size(),
                    input.size()[0],
                    logits.size().get(1).copied().unwrap_or(0)
                ),
            ));
        }
    }
    Ok(map)
}

/// Runs `model` on the reference's input (`train` selects batch statistics; dropout stays off)
/// and compares. The model must already be on its device in its precision.
pub fn check(
    model: &Model,
    reference: &HashMap<String, Tensor>,
    train: bool,
    precision: Precision,
) -> Result<ParityReport> {
    let device = model.device();
    if !train && reference.keys().any(|k| k.starts_with("state.")) {
        return Err(Error::bad_input(
            "reference",
            "it was made in train mode (it has `state.*` buffers), this run is in eval mode: the \
             modes differ; pass --mode train",
        ));
    }
    let compared_with = reference_logits(model, reference, precision)?;
    let want = &reference[&compared_with];
    let input = reference["input"]
        .f_to_device(device)?
        .f_to_kind(precision.kind())?;
    let (logits, stages) = {
        let _guard = tch::no_grad_guard();
        model.forward_with_stages(&input, train, Dropout::Off)?
    };
    let logits = logits
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?;
    let logit_diff = diff(&compared_with, &logits, want)?;
    let vs_fp32 = if compared_with != "logits" {
        Some(diff("logits", &logits, &reference["logits"])?)
    } else {
        None
    };
    let (top1, top5) = top_k_agreement(&logits, want)?;
    let stage_diffs = stage_diffs(&stages, reference)?;
    let worst_buffer = if train {
        worst_buffer(model, reference)?
    } else {
        None
    };

    let tolerance = Tolerance::for_precision(precision, compared_with != "logits");
    let samples = want.size()[0];
    let pass = within(
        &tolerance,
        precision,
        &logit_diff,
        top1,
        top5,
        samples,
        &worst_buffer,
    );
    Ok(ParityReport {
        mode: if train { "train" } else { "eval" }.into(),
        precision,
        device: format!("{device:?}"),
        pass,
        compared_with,
        logits: logit_diff,
        vs_fp32,
        top1_agree: top1,
        top5_agree: top5,
        samples,
        stages: stage_diffs,
        worst_buffer,
        tolerance,
    })
}

/// Which reference logits to compare with: PyTorch's in the same reduced precision
/// (`logits.fp16` / `logits.bf16`) when the reference has them, else `logits`. Errors when
/// their class count is not the model's.
fn reference_logits(
    model: &Model,
    reference: &HashMap<String, Tensor>,
    precision: Precision,
) -> Result<String> {
    let same_precision = format!("logits.{}", precision.name());
    let compared_with = match reference.get(&same_precision) {
        Some(_) if precision != Precision::Fp32 => same_precision,
        _ => "logits".to_string(),
    };
    let k = model.config().num_classes;
    let classes = reference[&compared_with].size()[1];
    if classes != k {
        return Err(Error::bad_input(
            "reference",
            format!("`logits` has {classes} classes, the model {k}"),
        ));
    }
    Ok(compared_with)
}

/// How many samples agree with the reference on the top-1 index, and on the top-5 indices in
/// order (top-K when there are fewer classes).
fn top_k_agreement(logits: &Tensor, want: &Tensor) -> Result<(i64, i64)> {
    let top = want.size()[1].min(5);
    let ours_top = logits.f_topk(top, 1, true, true)?.1;
    let want_top = want.f_topk(top, 1, true, true)?.1;
    let (mut top1, mut top5) = (0, 0);
    for i in 0..want.size()[0] {
        let a: Vec<i64> = Vec::try_from(ours_top.f_get(i)?)?;
        let b: Vec<i64> = Vec::try_from(want_top.f_get(i)?)?;
        top1 += (a[0] == b[0]) as i64;
        top5 += (a == b) as i64;
    }
    Ok((top1, top5))
}

/// The stage feature maps the reference has (`feature.<stage>`), compared in order; a
/// `feature.*` name that is no stage of the model is an error.
fn stage_diffs(stages: &[StageOutput], reference: &HashMap<String, Tensor>) -> Result<Vec<Diff>> {
    let mut unknown: Vec<&str> = reference
        .keys()
        .filter_map(|k| k.strip_prefix("feature."))
        .filter(|name| !stages.iter().any(|s| s.name == *name))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        let known: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::bad_input(
            "reference",
            format!(
                "`feature.*` names no stage of the model: {} (the stages are {})",
                crate::error::first_of(&unknown),
                crate::error::first_of(&known)
            ),
        ));
    }
    let mut diffs = Vec::new();
    for stage in stages {
        if let Some(r) = reference.get(&format!("feature.{}", stage.name)) {
            diffs.push(diff(&stage.name, &stage.tensor, r)?);
        }
    }
    Ok(diffs)
}

/// The worst of the reference's `state.<key>` buffers against the model's after a train-mode
/// forward; `None` when the reference has none.
fn worst_buffer(model: &Model, reference: &HashMap<String, Tensor>) -> Result<Option<Diff>> {
    let vars = model.var_store().variables();
    let mut worst: Option<Diff> = None;
    for (key, want) in reference
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("state.")?, v)))
    {
        let ours = vars.get(key).ok_or_else(|| {
            Error::bad_input("reference", format!("buffer `{key}` is not in the model"))
        })?;
        let d = diff(key, ours, want)?;
        // NaN counts as the worst (every comparison with NaN is false).
        if worst
            .as_ref()
            .is_none_or(|w| d.max_abs.is_nan() || d.max_abs > w.max_abs)
        {
            worst = Some(d);
        }
    }
    Ok(worst)
}

/// The verdict: the logit error, the top-k agreement and the worst buffer within `tolerance`.
fn within(
    tolerance: &Tolerance,
    precision: Precision,
    logits: &Diff,
    top1: i64,
    top5: i64,
    samples: i64,
    worst_buffer: &Option<Diff>,
) -> bool {
    let err = if tolerance.relative {
        logits.max_rel
    } else {
        logits.max_abs
    };
    let top_ok = if tolerance.top_k >= 5 {
        top5 == samples
    } else {
        top1 == samples
    };
    let buffers_ok = worst_buffer.as_ref().is_none_or(|d| {
        if precision == Precision::Fp32 {
            d.max_abs <= tolerance.logits
        } else {
            d.max_rel <= tolerance.logits
        }
    });
    err <= tolerance.logits && top_ok && buffers_ok
}
