//! How an optimizer's options and per-parameter state map to the keys of torch's
//! `optimizer.state_dict()`. Each is described once, and that description both writes a state
//! dict and reads it back: the options by [`Algorithm::options`], which visits them with their
//! keys ([`OptionFields`]); a state by its struct, declared with [`param_state!`], whose fields
//! are named as torch's keys (`step`, `exp_avg`, `momentum_buffer`, ...).

use tch::Tensor;

use super::Algorithm;
use crate::value::{Dict, Parse, Value};

/// The options of a group by their keys in torch's state dict, visited by
/// [`Algorithm::options`] to write them or to read them.
pub trait OptionFields {
    fn number(&mut self, key: &'static str, value: &mut f64);
    fn flag(&mut self, key: &'static str, value: &mut bool);
    fn pair(&mut self, key: &'static str, value: &mut (f64, f64));
}

/// Writes the options into a group dict.
struct WriteOptions<'a>(&'a mut Dict);

impl OptionFields for WriteOptions<'_> {
    fn number(&mut self, key: &'static str, value: &mut f64) {
        self.0.insert(key, *value);
    }

    fn flag(&mut self, key: &'static str, value: &mut bool) {
        self.0.insert(key, *value);
    }

    fn pair(&mut self, key: &'static str, value: &mut (f64, f64)) {
        self.0
            .insert(key, Value::Tuple(vec![value.0.into(), value.1.into()]));
    }
}

/// Reads the options from a group dict, keeping the first problem.
struct ReadOptions<'a> {
    group: &'a Dict,
    error: Option<String>,
}

impl ReadOptions<'_> {
    fn set<T>(&mut self, value: &mut T, read: Parse<T>) {
        match read {
            Ok(v) => *value = v,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

impl OptionFields for ReadOptions<'_> {
    fn number(&mut self, key: &'static str, value: &mut f64) {
        let read = self.group.f64(key);
        self.set(value, read);
    }

    fn flag(&mut self, key: &'static str, value: &mut bool) {
        let read = self.group.bool(key);
        self.set(value, read);
    }

    fn pair(&mut self, key: &'static str, value: &mut (f64, f64)) {
        let read = self.group.field(key).and_then(|v| {
            match v.as_seq() {
                Some([a, b]) => a.as_f64().zip(b.as_f64()).ok_or(()),
                _ => Err(()),
            }
            .map_err(|()| format!("`{key}`: expected two numbers"))
        });
        self.set(value, read);
    }
}

/// A group's options and the flags torch keeps next to them, into `group`.
pub(super) fn write_options<A: Algorithm>(options: &A::Options, group: &mut Dict) {
    A::options(&mut options.clone(), &mut WriteOptions(group));
    for &flag in flags(A::NAME) {
        group.insert(flag, flag_default(flag).map_or(Value::None, Value::Bool));
    }
}

/// A group's options from its dict (the flags are checked by [`check_flags`]).
pub(super) fn read_options<A: Algorithm>(group: &Dict) -> Parse<A::Options> {
    let mut options = A::Options::default();
    let mut read = ReadOptions { group, error: None };
    A::options(&mut options, &mut read);
    read.error.map_or(Ok(options), Err)
}

/// The flags torch keeps in every group of the optimizer class `name`, besides its options:
/// the code paths and variants we do not implement.
fn flags(name: &str) -> &'static [&'static str] {
    match name {
        "SGD" => &["maximize", "foreach", "differentiable", "fused"],
        "AdamW" => &[
            "maximize",
            "foreach",
            "capturable",
            "differentiable",
            "fused",
            "decoupled_weight_decay",
        ],
        "RMSprop" => &["capturable", "foreach", "maximize", "differentiable"],
        _ => &[],
    }
}

/// A flag as torch's default writes it (`None` for Python's `None`).
fn flag_default(flag: &str) -> Option<bool> {
    match flag {
        "decoupled_weight_decay" => Some(true),
        "maximize" | "capturable" | "differentiable" => Some(false),
        _ => None, // foreach, fused
    }
}

/// That a group has the flags which change the numbers (`maximize`, `decoupled_weight_decay`)
/// as we run them, or not at all. The others choose among code paths that compute the same
/// update, and any value is fine.
pub(super) fn check_flags<A: Algorithm>(group: &Dict) -> Parse<()> {
    const NUMERIC: [&str; 2] = ["maximize", "decoupled_weight_decay"];
    for &flag in flags(A::NAME).iter().filter(|f| NUMERIC.contains(f)) {
        if let Some(value) = flag_default(flag) {
            group.flag_is(flag, value)?;
        }
    }
    Ok(())
}

/// A per-parameter state, written into and read from its entry of the state dict's `state`.
/// Implemented by the crate's `param_state!` macro.
pub trait ParamState: Sized {
    /// Adds the fields to `entry`; none for a state without buffers yet (SGD before its first
    /// step with momentum), which torch's state dict does not list.
    fn write(&self, entry: &mut Dict);

    /// `self`, a fresh state from [`Algorithm::init`] (buffers of the parameter's shape, dtype
    /// and device), with the entry's values copied in.
    fn read(self, entry: &Dict, param: &Tensor) -> Parse<Self>;
}

/// One field of a [`ParamState`] under its key: the step count (`f32`), a buffer every state
/// has (`Tensor`), or a buffer only some options create (`Option<Tensor>`).
pub trait StateField: Sized {
    fn write(&self, key: &'static str, entry: &mut Dict);
    /// The saved value; `self` is the fresh one.
    fn read(self, key: &'static str, entry: &Dict, param: &Tensor) -> Parse<Self>;
}

/// `state["step"]`: a float32 scalar tensor in torch (`torch.tensor(0.0)` on the CPU, not
/// capturable), a plain number in older checkpoints.
impl StateField for f32 {
    fn write(&self, key: &'static str, entry: &mut Dict) {
        entry.insert(key, Tensor::from(*self));
    }

    fn read(self, key: &'static str, entry: &Dict, _: &Tensor) -> Parse<f32> {
        let v = entry.field(key)?;
        let step = match v {
            Value::Tensor(t) if t.numel() == 1 => t
                .f_view([1])
                .and_then(|t| t.f_double_value(&[0]))
                .map_err(|e| format!("`{key}`: {e}"))?,
            _ => v.expect(key, "a number or a one-element tensor", Value::as_f64)?,
        };
        Ok(step as f32)
    }
}

/// A buffer: the live tensor is written (torch's state dicts hold references); the saved one
/// is copied into the fresh buffer, taking its dtype, device and layout (torch's
/// `value.to(param.dtype, param.device)`).
impl StateField for Tensor {
    fn write(&self, key: &'static str, entry: &mut Dict) {
        entry.insert(key, self.shallow_clone());
    }

    fn read(mut self, key: &'static str, entry: &Dict, _: &Tensor) -> Parse<Tensor> {
        let saved = entry
            .field(key)?
            .expect(key, "a tensor", Value::as_tensor)?;
        if saved.size() != self.size() {
            return Err(format!(
                "`{key}`: shape {:?}, but the parameter's is {:?}",
                saved.size(),
                self.size()
            ));
        }
        self.f_copy_(saved).map_err(|e| format!("`{key}`: {e}"))?;
        Ok(self)
    }
}

/// A buffer that the options create (`max_exp_avg_sq` with amsgrad) must be saved; one they do
/// not create is read when saved (SGD's `momentum_buffer`, absent before the first step).
impl StateField for Option<Tensor> {
    fn write(&self, key: &'static str, entry: &mut Dict) {
        if let Some(t) = self {
            t.write(key, entry);
        }
    }

    fn read(self, key: &'static str, entry: &Dict, param: &Tensor) -> Parse<Self> {
        let fresh = match (self, entry.get(key)) {
            (Some(fresh), _) => fresh,
            (None, Some(_)) => param.f_zeros_like().map_err(|e| format!("`{key}`: {e}"))?,
            (None, None) => return Ok(None),
        };
        fresh.read(key, entry, param).map(Some)
    }
}

/// Declares a per-parameter state struct (`#[derive(Debug)]`, public fields named as torch's
/// keys, each a [`StateField`]) and its [`ParamState`] impl, which writes and reads the fields
/// in their order.
macro_rules! param_state {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $crate::train::optim::ParamState for $name {
            fn write(&self, entry: &mut $crate::train::Dict) {
                use $crate::train::optim::StateField;
                $(self.$field.write(stringify!($field), entry);)*
            }

            fn read(
                self,
                entry: &$crate::train::Dict,
                param: &tch::Tensor,
            ) -> std::result::Result<Self, String> {
                use $crate::train::optim::StateField;
                Ok($name {
                    $($field: self.$field.read(stringify!($field), entry, param)?,)*
                })
            }
        }
    };
}

pub(crate) use param_state;
