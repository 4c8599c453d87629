//! Plain data as Python holds it: the value tree that `model.state_dict()`,
//! `optimizer.state_dict()`, `lr_scheduler.state_dict()` and whole training checkpoints are made
//! of (dicts, lists, tuples, numbers, strings, tensors), nothing but what
//! `torch.load(weights_only=True)` accepts.
//!
//! The optimizers ([`crate::train::optim`]) and schedulers ([`crate::train::schedule`]) write
//! their state in exactly the shape torch gives it (same keys, same nesting, parameter indices
//! as integer keys) and rebuild themselves from it; [`crate::weights::write_pth_value`] writes a
//! [`Value`] as a `.pth` file.

use tch::Tensor;

/// One node of a state dict: what a Python `state_dict()` holds, type for type.
#[derive(Debug)]
pub enum Value {
    /// `None`.
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A tensor. State dicts hold the live buffers (as torch's do): a shallow handle, not a copy.
    Tensor(Tensor),
    List(Vec<Value>),
    /// A tuple, such as Adam's `betas`.
    Tuple(Vec<Value>),
    /// A `dict`.
    Dict(Dict),
    /// A `collections.OrderedDict`, what `model.state_dict()` returns.
    OrderedDict(Dict),
}

/// A dict key: a string, or an integer (the parameter indices of an optimizer's `state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Int(i64),
    Str(String),
}

/// A dict in insertion order, as Python keeps it.
#[derive(Debug, Default)]
pub struct Dict(Vec<(Key, Value)>);

/// Why a state dict could not be read back: which key, what was wrong. The caller names the
/// state dict (`SGD state dict: param_groups[1]: ...`).
pub(crate) type Parse<T> = std::result::Result<T, String>;

impl Value {
    /// A short type name for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tensor(_) => "tensor",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::OrderedDict(_) => "OrderedDict",
        }
    }

    /// A list of floats (`base_lrs`, `_last_lr`).
    pub fn floats(values: &[f64]) -> Value {
        Value::List(values.iter().map(|&v| Value::Float(v)).collect())
    }

    /// A number as a float: Python's `int` or `float` (torch writes `dampening=0` as an int).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The items of a list or a tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The entries of a dict or an `OrderedDict`.
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) | Value::OrderedDict(d) => Some(d),
            _ => None,
        }
    }

    /// A model's state dict: an `OrderedDict` of the tensors under their names, in order (shallow
    /// handles: no data is copied).
    pub fn state_dict(tensors: &[(String, Tensor)]) -> Value {
        Value::OrderedDict(
            tensors
                .iter()
                .map(|(k, t)| (Key::from(k.as_str()), Value::Tensor(t.shallow_clone())))
                .collect(),
        )
    }

    /// The value as a `T`, or a message naming `what` and the type found.
    pub(crate) fn expect<'a, T>(
        &'a self,
        what: &str,
        expected: &str,
        get: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Parse<T> {
        get(self).ok_or_else(|| format!("{what}: expected {expected}, got {}", self.type_name()))
    }
}

/// `From<T> for Value`, each `T` into its variant.
macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v)
            }
        }
    )*};
}

value_from!(bool => Bool, i64 => Int, f64 => Float, String => Str, Tensor => Tensor, Dict => Dict);

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<&str> for Key {
    fn from(k: &str) -> Self {
        Key::Str(k.to_owned())
    }
}

impl From<String> for Key {
    fn from(k: String) -> Self {
        Key::Str(k)
    }
}

impl From<i64> for Key {
    fn from(k: i64) -> Self {
        Key::Int(k)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(k) => write!(f, "{k}"),
            Key::Str(k) => write!(f, "`{k}`"),
        }
    }
}

impl Dict {
    pub fn new() -> Self {
        Dict(Vec::new())
    }

    /// Sets `key` to `value`, in place if the key is already there (as Python does).
    pub fn insert(&mut self, key: impl Into<Key>, value: impl Into<Value>) {
        let (key, value) = (key.into(), value.into());
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// `self` with `key` set: for building dicts in one expression.
    pub fn with(mut self, key: impl Into<Key>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    pub fn get(&self, key: impl Into<Key>) -> Option<&Value> {
        let key = key.into();
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The entries in insertion order.
    pub fn entries(&self) -> &[(Key, Value)] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value under a string key, or a message saying it is missing.
    pub(crate) fn field(&self, key: &str) -> Parse<&Value> {
        self.get(key).ok_or_else(|| format!("missing key `{key}`"))
    }

    pub(crate) fn f64(&self, key: &str) -> Parse<f64> {
        self.field(key)?.expect(key, "a number", Value::as_f64)
    }

    pub(crate) fn i64(&self, key: &str) -> Parse<i64> {
        self.field(key)?.expect(key, "an int", Value::as_i64)
    }

    pub(crate) fn bool(&self, key: &str) -> Parse<bool> {
        self.field(key)?.expect(key, "a bool", Value::as_bool)
    }

    /// A list of numbers, as [`Value::floats`] writes it.
    pub(crate) fn floats(&self, key: &str) -> Parse<Vec<f64>> {
        self.list_of(key, "a number", Value::as_f64)
    }

    pub(crate) fn ints(&self, key: &str) -> Parse<Vec<i64>> {
        self.list_of(key, "an int", Value::as_i64)
    }

    fn list_of<T>(&self, key: &str, expected: &str, get: fn(&Value) -> Option<T>) -> Parse<Vec<T>> {
        let items = self.field(key)?.expect(key, "a list", Value::as_seq)?;
        let item = |(i, v): (usize, &Value)| v.expect(&format!("{key}[{i}]"), expected, get);
        items.iter().enumerate().map(item).collect()
    }

    /// Whether a flag torch keeps in every group (`maximize`, `differentiable`) is absent or
    /// has the one value we implement.
    pub(crate) fn flag_is(&self, key: &str, supported: bool) -> Parse<()> {
        match self.get(key) {
            None | Some(Value::None) => Ok(()),
            Some(v) if v.as_bool() == Some(supported) => Ok(()),
            Some(v) => Err(format!("`{key}`: only {supported} is supported, got {v:?}")),
        }
    }
}

impl FromIterator<(Key, Value)> for Dict {
    fn from_iter<I: IntoIterator<Item = (Key, Value)>>(iter: I) -> Self {
        let mut dict = Dict::new();
        for (k, v) in iter {
            dict.insert(k, v);
        }
        dict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_in_place_and_keeps_order() {
        let d = Dict::new().with("lr", 0.1).with(3, true).with("lr", 0.2);
        assert_eq!(d.len(), 2);
        assert_eq!(d.entries()[0].0, Key::from("lr"));
        assert_eq!(d.f64("lr"), Ok(0.2));
        assert_eq!(d.get(3).and_then(Value::as_bool), Some(true));
    }

    #[test]
    fn readers_name_the_key_and_the_type() {
        let d = Dict::new().with("momentum", "fast").with("dampening", 0i64);
        assert_eq!(d.f64("dampening"), Ok(0.0));
        assert_eq!(
            d.f64("momentum").unwrap_err(),
            "momentum: expected a number, got str"
        );
        assert_eq!(d.bool("nesterov").unwrap_err(), "missing key `nesterov`");
        assert!(d.flag_is("maximize", false).is_ok());
        let d = d.with("maximize", true);
        assert!(d
            .flag_is("maximize", false)
            .unwrap_err()
            .contains("maximize"));
    }
}
