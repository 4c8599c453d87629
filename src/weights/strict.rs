//! Strict loading of a state dict into a `VarStore`: everything is checked first and reported in
//! one error; only then is anything copied (no silent broadcast, no partial load).

use super::pickle::DType;
use super::StateDict;
use crate::error::{DtypeMismatch, ShapeMismatch};
use crate::{Error, Result};
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::Tensor;

/// How strict [`load_into`] is. The default is fully strict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Variables of the model missing from the state dict are left as they are.
    pub allow_missing: bool,
    /// State dict entries the model has no variable for are ignored.
    pub allow_unexpected: bool,
    /// Variables take the checkpoint's dtype (e.g. stay float16) instead of converting each
    /// tensor to the variable's dtype.
    pub keep_dtype: bool,
}

/// `num_batches_tracked` (BatchNorm's counter) may be missing or extra: torchvision checkpoints
/// from before it existed lack it, and models that do not track it ignore it.
fn tolerated(key: &str) -> bool {
    key == "num_batches_tracked" || key.ends_with(".num_batches_tracked")
}

fn dtype_name(t: &Tensor) -> String {
    DType::from_kind(t.kind())
        .map(|d| d.name().to_string())
        .unwrap_or_else(|| format!("{:?}", t.kind()))
}

/// Loads `sd` into `vs` strictly: every variable must be in the state dict with the same
/// shape, and every entry must be a variable (see [`LoadOptions`]). One error,
/// [`Error::StateDictMismatch`], lists every missing key, unexpected key, shape mismatch and
/// unsupported dtype; on error nothing has been copied. float16/bfloat16 checkpoints load into
/// a float32 model (converted) unless `keep_dtype`.
///
/// Values that no trained model holds are refused too ([`Error::Malformed`] naming the keys):
/// NaN or infinity in any floating-point tensor, a negative `running_var`.
pub fn load_into(vs: &VarStore, sd: &StateDict, opts: &LoadOptions) -> Result<()> {
    let plan = plan(vs, sd, opts)?;
    check_values(sd)?;
    tch::no_grad(|| -> Result<()> {
        for (mut var, src) in plan {
            if opts.keep_dtype && var.kind() != src.kind() {
                let data = src.f_to_device(var.device())?.f_contiguous()?.copy();
                var.f_set_data(&data)?;
            } else {
                var.f_copy_(src)?;
            }
        }
        Ok(())
    })
}

/// Refuses NaN or infinity in any floating-point tensor of `sd` and a negative `running_var`:
/// such a file gives NaN or plausible-looking but wrong answers.
fn check_values(sd: &StateDict) -> Result<()> {
    let mut bad = Vec::new();
    for (key, t) in &sd.tensors {
        if !t.is_floating_point() || t.numel() == 0 {
            continue;
        }
        let problem = if t.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            "NaN or infinity"
        } else if key.ends_with("running_var") && t.f_lt(0.0)?.f_any()?.f_int64_value(&[])? != 0 {
            "a negative running variance"
        } else {
            continue;
        };
        bad.push(format!("{key}: {problem}"));
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Malformed {
        path: sd.path.clone(),
        context: sd.format.to_string(),
        offset: None,
        msg: format!(
            "impossible values in {}, refused: {}",
            crate::error::plural(bad.len(), "tensor"),
            crate::error::first_of(&bad)
        ),
    })
}

/// Whether a `src` tensor may load into a `var` variable: same dtype, or both floating point,
/// or both integers.
fn dtypes_agree(var: &Tensor, src: &Tensor) -> bool {
    let int = |d: DType| !d.is_float() && d != DType::Bool;
    match (DType::from_kind(var.kind()), DType::from_kind(src.kind())) {
        (Some(v), Some(s)) => v == s || (v.is_float() && s.is_float()) || (int(v) && int(s)),
        _ => false,
    }
}

/// Each variable with the state dict entry it loads, or the error listing every problem.
fn plan<'a>(
    vs: &VarStore,
    sd: &'a StateDict,
    opts: &LoadOptions,
) -> Result<Vec<(Tensor, &'a Tensor)>> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let entries: HashMap<&str, &Tensor> = sd.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let (mut missing, mut shapes, mut dtypes, mut plan) = (vec![], vec![], vec![], vec![]);
    for (name, var) in vars {
        let Some(&src) = entries.get(name.as_str()) else {
            if !tolerated(&name) && !opts.allow_missing {
                missing.push(name);
            }
            continue;
        };
        let (expected, got) = (var.size(), src.size());
        if expected != got {
            shapes.push(ShapeMismatch {
                key: name,
                expected,
                got,
            });
        } else if !dtypes_agree(&var, src) {
            dtypes.push(DtypeMismatch {
                key: name,
                tensor: dtype_name(src),
                variable: dtype_name(&var),
            });
        } else {
            plan.push((var, src));
        }
    }
    let mut unexpected = Vec::new();
    if !opts.allow_unexpected {
        let names: std::collections::HashSet<String> = vs.variables().into_keys().collect();
        for (k, _) in &sd.tensors {
            if !names.contains(k) && !tolerated(k) {
                unexpected.push(k.clone());
            }
        }
    }
    if missing.is_empty() && unexpected.is_empty() && shapes.is_empty() && dtypes.is_empty() {
        return Ok(plan);
    }
    Err(Error::StateDictMismatch {
        path: sd.path.clone(),
        format: sd.format,
        tensors: sd.tensors.len(),
        missing: missing.into(),
        unexpected: unexpected.into(),
        shapes: shapes.into(),
        dtypes: dtypes.into(),
    })
}
