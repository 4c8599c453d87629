//! Optimizers over parameter groups, as `torch.optim.Optimizer` (`torch/optim/optimizer.py`)
//! runs them: [`Sgd`], [`AdamW`] and [`RmsProp`], each the single-tensor path of its torch file
//! (`foreach=False`, `fused=False`, `maximize=False`, `differentiable=False`), line by line.
//!
//! [`Optimizer`] is the shared part: the groups (each with its `lr`, `weight_decay` and the
//! algorithm's options), the per-parameter state created on a parameter's first step, skipping
//! parameters without a gradient, `zero_grad` with `set_to_none=True`, and the state dict in
//! torch's shape (`{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`),
//! written and read back. Each algorithm ([`Algorithm`]) adds its update of one parameter and
//! its own options and state.
//!
//! ```
//! use mobilenet::train::{Optimize, Optimizer, ParamGroup, Sgd, SgdOptions};
//! use tch::{Kind, Tensor};
//!
//! let w = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
//! let momentum = SgdOptions { momentum: 0.9, ..Default::default() };
//! let group = ParamGroup::new(vec![w.shallow_clone()], 0.1, 0.0, momentum);
//! let mut opt = Optimizer::<Sgd>::new(vec![group])?;
//! (&w * 2.0).sum(Kind::Float).backward(); // grad = 2
//! opt.step()?;
//! opt.zero_grad();
//! assert!(!w.grad().defined());
//! assert!((w.double_value(&[0]) - 0.8).abs() < 1e-6);
//! # Ok::<(), mobilenet::Error>(())
//! ```

mod adamw;
mod fields;
mod rmsprop;
mod sgd;

pub use adamw::{AdamW, AdamWOptions, AdamWState};
pub(crate) use fields::param_state;
pub use fields::{OptionFields, ParamState, StateField};
pub use rmsprop::{RmsProp, RmsPropOptions, RmsPropState};
pub use sgd::{Sgd, SgdOptions, SgdState};

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

use tch::Tensor;

use super::schedule::LrGroups;
use crate::ffi::{scaled_op, ScaledOp};
use crate::value::{Dict, Key, Parse, Value};
use crate::{Error, Result};
use fields::{check_flags, read_options, write_options};

/// One parameter group, torch's `optimizer.param_groups[i]`: its parameters, learning rate,
/// weight decay and the algorithm's options (`momentum`, `betas`, ...).
#[derive(Debug)]
pub struct ParamGroup<O> {
    params: Vec<Tensor>,
    pub lr: f64,
    pub weight_decay: f64,
    /// The learning rate the schedulers start from: set by the first scheduler built on the
    /// optimizer (torch's `group.setdefault("initial_lr", lr)`), then kept in the state dict.
    pub initial_lr: Option<f64>,
    pub options: O,
}

impl<O> ParamGroup<O> {
    /// `params` are handles to the model's variables (`shallow_clone`s): the optimizer updates
    /// them in place and reads their `.grad`.
    pub fn new(params: Vec<Tensor>, lr: f64, weight_decay: f64, options: O) -> Self {
        ParamGroup {
            params,
            lr,
            weight_decay,
            initial_lr: None,
            options,
        }
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }
}

/// An optimization algorithm: the update of one parameter (the body of torch's
/// `_single_tensor_*` loop), its options and state, and their keys in torch's state dict.
pub trait Algorithm: 'static {
    /// torch's class name: `SGD`, `AdamW`, `RMSprop`.
    const NAME: &'static str;
    /// The options of a group besides `lr` and `weight_decay`.
    type Options: Clone + Debug + Default + PartialEq + 'static;
    /// One parameter's `optimizer.state[p]` (declared with the crate's `param_state!`).
    type State: ParamState + Debug + 'static;

    /// The option checks of the torch constructor, as its message.
    fn check(options: &Self::Options) -> Parse<()>;

    /// A parameter's state before its first step (torch's lazy initialization of `state[p]`).
    fn init(options: &Self::Options, param: &Tensor) -> Result<Self::State>;

    /// One step of one parameter that has a gradient.
    fn update(state: &mut Self::State, step: Step<'_, Self::Options>) -> Result<()>;

    /// Walks the options with their keys in torch's groups: the one description that both
    /// writes a group dict and reads it back.
    fn options(options: &mut Self::Options, fields: &mut dyn OptionFields);
}

/// What one parameter's update reads: its group's settings, the parameter (updated in place)
/// and its gradient.
#[derive(Debug)]
pub struct Step<'a, O> {
    pub lr: f64,
    pub weight_decay: f64,
    pub options: &'a O,
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
}

/// An optimizer: parameter groups and per-parameter state, stepped by algorithm `A`.
#[derive(Debug)]
pub struct Optimizer<A: Algorithm> {
    groups: Vec<ParamGroup<A::Options>>,
    /// torch's `state`, by the parameter's index over all groups in order (the index its state
    /// dict uses).
    state: Vec<Option<A::State>>,
}

/// What a training loop needs of any optimizer, so that `Box<dyn Optimize>` holds the one the
/// command line chose.
pub trait Optimize: LrGroups {
    /// torch's class name: `SGD`, `AdamW`, `RMSprop`.
    fn name(&self) -> &'static str;
    /// `optimizer.zero_grad()` (`set_to_none=True`): every parameter's `.grad` becomes
    /// undefined, so a parameter that gets no gradient before the next step is skipped.
    fn zero_grad(&self);
    /// `optimizer.step()`: updates every parameter that has a gradient, under `no_grad`.
    fn step(&mut self) -> Result<()>;
    /// `optimizer.state_dict()`: the live buffers (not copies) and the groups' settings.
    fn state_dict(&self) -> Value;
    /// `optimizer.load_state_dict(..)`: the groups' settings and a copy of the state, checked
    /// against this optimizer's groups first; on error nothing changes.
    fn load_state_dict(&mut self, state_dict: &Value) -> Result<()>;
}

impl<A: Algorithm> Optimizer<A> {
    /// Checks each group as torch's constructor does (`lr >= 0`, `weight_decay >= 0`, the
    /// algorithm's options) and that no parameter is in two groups.
    pub fn new(groups: Vec<ParamGroup<A::Options>>) -> Result<Self> {
        let config = |msg: String| Error::Config {
            what: format!("{} parameter groups", A::NAME),
            msg,
        };
        let mut seen = HashSet::new();
        for (i, g) in groups.iter().enumerate() {
            check_group::<A>(g).map_err(|msg| config(format!("param_groups[{i}]: {msg}")))?;
            // Parameters with elements are distinct leaves with distinct storage.
            let shared = g.params.iter().filter(|p| p.numel() > 0);
            if shared
                .map(|p| p.data_ptr() as usize)
                .any(|ptr| !seen.insert(ptr))
            {
                return Err(config(format!(
                    "param_groups[{i}]: some parameters appear in more than one parameter group"
                )));
            }
        }
        if groups.iter().all(|g| g.params.is_empty()) {
            return Err(config("optimizer got an empty parameter list".into()));
        }
        let count = groups.iter().map(|g| g.params.len()).sum();
        Ok(Optimizer {
            groups,
            state: std::iter::repeat_with(|| None).take(count).collect(),
        })
    }

    pub fn param_groups(&self) -> &[ParamGroup<A::Options>] {
        &self.groups
    }

    /// The groups' settings (`lr`, `weight_decay`, options) may change between steps, as in
    /// torch; their parameters may not.
    pub fn param_groups_mut(&mut self) -> &mut [ParamGroup<A::Options>] {
        &mut self.groups
    }

    /// The state of the parameter at `index` over all groups in order; `None` before its first
    /// step.
    pub fn state(&self, index: usize) -> Option<&A::State> {
        self.state.get(index)?.as_ref()
    }

    /// Every parameter, over all groups in order.
    fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| &g.params)
    }

    fn parse_state_dict(&self, state_dict: &Value) -> Parse<Loaded<A>> {
        let d = state_dict.expect("state dict", "a dict", Value::as_dict)?;
        let saved = d
            .field("param_groups")?
            .expect("param_groups", "a list", Value::as_seq)?;
        if saved.len() != self.groups.len() {
            return Err(format!(
                "loaded state dict has a different number of parameter groups ({} vs {})",
                saved.len(),
                self.groups.len()
            ));
        }
        // Saved parameter ids map to ours by position, as torch's `load_state_dict` zips them.
        let mut index_of = HashMap::new();
        let mut settings = Vec::with_capacity(saved.len());
        for (i, (s, g)) in saved.iter().zip(&self.groups).enumerate() {
            let at = |msg: String| format!("param_groups[{i}]: {msg}");
            let s = s.expect("group", "a dict", Value::as_dict).map_err(at)?;
            let ids = s.field("params").map_err(at)?;
            let ids = ids.expect("params", "a list", Value::as_seq).map_err(at)?;
            if ids.len() != g.params.len() {
                return Err(at(format!(
                    "loaded state dict contains a parameter group that doesn't match the size \
                     of optimizer's group ({} vs {} parameters)",
                    ids.len(),
                    g.params.len()
                )));
            }
            for id in ids {
                let id = id.expect("params", "int ids", Value::as_i64).map_err(at)?;
                index_of.insert(id, index_of.len());
            }
            settings.push(read_group::<A>(s).map_err(at)?);
        }
        let mut state: Vec<Option<A::State>> = std::iter::repeat_with(|| None)
            .take(self.state.len())
            .collect();
        let params: Vec<_> = self.params().collect();
        let entries = d
            .field("state")?
            .expect("state", "a dict", Value::as_dict)?;
        for (key, entry) in entries.entries() {
            let at = |msg: String| format!("state[{key}]: {msg}");
            let index = match key {
                Key::Int(id) => index_of.get(id).copied(),
                Key::Str(_) => None,
            };
            let index = index.ok_or_else(|| at("no parameter group lists this id".into()))?;
            let entry = entry
                .expect("entry", "a dict", Value::as_dict)
                .map_err(at)?;
            let param = params[index];
            let options = &settings[group_of(&self.groups, index)].options;
            let fresh = A::init(options, param).map_err(|e| at(e.to_string()))?;
            state[index] = Some(fresh.read(entry, param).map_err(at)?);
        }
        Ok(Loaded { settings, state })
    }
}

/// A parsed state dict, applied only once all of it has been read.
struct Loaded<A: Algorithm> {
    settings: Vec<GroupSettings<A::Options>>,
    state: Vec<Option<A::State>>,
}

/// A group as its state dict entry sets it.
struct GroupSettings<O> {
    lr: f64,
    weight_decay: f64,
    initial_lr: Option<f64>,
    options: O,
}

fn read_group<A: Algorithm>(group: &Dict) -> Parse<GroupSettings<A::Options>> {
    check_flags::<A>(group)?;
    let options = read_options::<A>(group)?;
    let initial_lr = match group.get("initial_lr") {
        None => None,
        Some(v) => Some(v.expect("initial_lr", "a number", Value::as_f64)?),
    };
    let settings = GroupSettings {
        lr: group.f64("lr")?,
        weight_decay: group.f64("weight_decay")?,
        initial_lr,
        options,
    };
    check_numbers(settings.lr, settings.weight_decay)?;
    A::check(&settings.options)?;
    Ok(settings)
}

fn check_group<A: Algorithm>(g: &ParamGroup<A::Options>) -> Parse<()> {
    check_numbers(g.lr, g.weight_decay)?;
    A::check(&g.options)
}

fn check_numbers(lr: f64, weight_decay: f64) -> Parse<()> {
    check_non_negative("learning rate", lr)?;
    check_non_negative("weight_decay value", weight_decay)
}

/// torch's `if not 0.0 <= x: raise ValueError(f"Invalid {what}: {x}")`.
pub(crate) fn check_non_negative(what: &str, x: f64) -> Parse<()> {
    if x >= 0.0 {
        Ok(())
    } else {
        Err(format!("Invalid {what}: {x}"))
    }
}

/// The group that holds the parameter at `index` over all groups in order.
fn group_of<O>(groups: &[ParamGroup<O>], index: usize) -> usize {
    let mut end = 0;
    groups
        .iter()
        .position(|g| {
            end += g.params.len();
            index < end
        })
        .unwrap_or(groups.len())
}

impl<A: Algorithm> Optimize for Optimizer<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn zero_grad(&self) {
        for p in self.params() {
            if p.grad().defined() {
                crate::ffi::clear_grad(p);
            }
        }
    }

    fn step(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut slots = self.state.iter_mut();
        for g in &self.groups {
            for (p, slot) in g.params.iter().zip(&mut slots) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                if slot.is_none() {
                    *slot = Some(A::init(&g.options, p)?);
                }
                let step = Step {
                    lr: g.lr,
                    weight_decay: g.weight_decay,
                    options: &g.options,
                    param: &mut p.shallow_clone(),
                    grad: &grad,
                };
                A::update(slot.as_mut().expect("set above"), step)?;
            }
        }
        Ok(())
    }

    fn state_dict(&self) -> Value {
        let mut state = Dict::new();
        for (i, s) in self.state.iter().enumerate() {
            let mut entry = Dict::new();
            if let Some(s) = s {
                s.write(&mut entry);
            }
            if !entry.is_empty() {
                state.insert(i as i64, entry);
            }
        }
        let mut next = 0;
        let groups = self.groups.iter().map(|g| {
            let mut d = Dict::new()
                .with("lr", g.lr)
                .with("weight_decay", g.weight_decay);
            write_options::<A>(&g.options, &mut d);
            if let Some(lr) = g.initial_lr {
                d.insert("initial_lr", lr);
            }
            let ids = (next..next + g.params.len() as i64).map(Value::Int);
            next += g.params.len() as i64;
            d.with("params", Value::List(ids.collect())).into()
        });
        Dict::new()
            .with("state", state)
            .with("param_groups", Value::List(groups.collect()))
            .into()
    }

    fn load_state_dict(&mut self, state_dict: &Value) -> Result<()> {
        let loaded = self
            .parse_state_dict(state_dict)
            .map_err(|msg| Error::Config {
                what: format!("{} state dict", A::NAME),
                msg,
            })?;
        for (g, s) in self.groups.iter_mut().zip(loaded.settings) {
            g.lr = s.lr;
            g.weight_decay = s.weight_decay;
            g.initial_lr = s.initial_lr;
            g.options = s.options;
        }
        self.state = loaded.state;
        Ok(())
    }
}

impl<A: Algorithm> LrGroups for Optimizer<A> {
    fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn lr(&self, group: usize) -> f64 {
        self.groups[group].lr
    }

    fn set_lr(&mut self, group: usize, lr: f64) {
        self.groups[group].lr = lr;
    }

    fn initial_lr(&self, group: usize) -> Option<f64> {
        self.groups[group].initial_lr
    }

    fn set_initial_lr(&mut self, group: usize, lr: f64) {
        self.groups[group].initial_lr = Some(lr);
    }
}

// torch's ops with a scalar argument, which tch binds without it: through the shim, so that each
// runs libtorch's own kernel (a fused multiply-add where the kernel has one), bit for bit.

/// `t.add_(other, alpha=alpha)`.
fn add_scaled_(t: &mut Tensor, other: &Tensor, alpha: f64) -> Result<()> {
    scaled_op(ScaledOp::AddInPlace, t, other, None, alpha).map(drop)
}

/// `t.addcmul_(a, b, value=value)`: `t + value * a * b`.
fn addcmul_(t: &mut Tensor, a: &Tensor, b: &Tensor, value: f64) -> Result<()> {
    scaled_op(ScaledOp::AddcmulInPlace, t, a, Some(b), value).map(drop)
}

/// `t.addcmul(a, b, value=value)`, out of place.
fn addcmul(t: &Tensor, a: &Tensor, b: &Tensor, value: f64) -> Result<Tensor> {
    scaled_op(ScaledOp::Addcmul, t, a, Some(b), value)
}

/// `t.addcdiv_(a, b, value=value)`: `t + value * a / b`.
fn addcdiv_(t: &mut Tensor, a: &Tensor, b: &Tensor, value: f64) -> Result<()> {
    scaled_op(ScaledOp::AddcdivInPlace, t, a, Some(b), value).map(drop)
}

/// `t.add(other, alpha=alpha)`, out of place.
fn add_scaled(t: &Tensor, other: &Tensor, alpha: f64) -> Result<Tensor> {
    scaled_op(ScaledOp::Add, t, other, None, alpha)
}

/// `grad.add(param, alpha=weight_decay)` when `weight_decay != 0` (L2 decay in the gradient),
/// else `grad` itself.
fn decayed_grad(grad: &Tensor, param: &Tensor, weight_decay: f64) -> Result<Tensor> {
    if weight_decay != 0.0 {
        add_scaled(grad, param, weight_decay)
    } else {
        Ok(grad.shallow_clone())
    }
}

/// `t.detach().clone()`: a new tensor with `t`'s values, dtype, device and layout.
fn copy(t: &Tensor) -> Result<Tensor> {
    let mut c = t.f_empty_like()?;
    c.f_copy_(t)?;
    Ok(c)
}

/// `torch.zeros_like(p, memory_format=torch.preserve_format)`.
fn zeros_like(p: &Tensor) -> Result<Tensor> {
    Ok(p.f_zeros_like()?)
}

/// A state buffer that the group's options need. It is there unless the options changed after
/// the parameter's first step, where torch fails on the missing key too.
fn needed<'a>(buffer: &'a mut Option<Tensor>, key: &str) -> Result<&'a mut Tensor> {
    buffer.as_mut().ok_or_else(|| Error::Config {
        what: "optimizer state".into(),
        msg: format!(
            "the options need `{key}`, which this parameter's state lacks (the options changed \
             after its first step)"
        ),
    })
}
