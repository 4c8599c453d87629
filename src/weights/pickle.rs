//! A restricted unpickler: the subset of Python's pickle machine that a `torch.save`d state dict
//! needs, and nothing that can run code.
//!
//! It is a data-only interpreter: `GLOBAL`/`STACK_GLOBAL` resolve against a fixed allow-list
//! ([`resolve_global`]) into inert markers, and `REDUCE`/`NEWOBJ`/`BUILD` only "call" those markers
//! by building plain values (a dict, a storage reference, a tensor description). Every other global
//! (`os.system`, `builtins.eval`, a model class from `torch.save(model)`, ...) is refused with an
//! error naming it, before anything else happens. This is the promise of
//! `torch.load(weights_only=True)`, kept here without Python.
//!
//! Values live in an arena ([`Pickle::nodes`]) and refer to each other by index, so memo sharing
//! (`BINPUT`/`BINGET`) behaves like Python's object references, cycles cannot leak or recurse, and
//! dropping is flat.
//!
//! **Memory is bounded by the input size.** Each opcode adds at most one node (48 bytes) and one
//! stack or memo slot, and storage and tensor descriptions are shared (`Rc`), never copied. What
//! an opcode *can* copy from values built earlier (the items of a memoized tuple turned into an
//! `OrderedDict` or a `torch.Size`, a tuple's items read as call arguments, a string turned into
//! bytes, a storage key, a class name) is charged, item by item and 8 bytes of text at a time,
//! against a budget of [`COPY_FACTOR`] times the input length (at least [`COPY_FLOOR`]). A real
//! state dict copies well under one item per input byte; a crafted pickle that fetches one memoized
//! value and expands it again and again (quadratic growth: a 52 KB file could otherwise build a
//! gigabyte of dicts) is refused with an error once it runs out, in time linear in its length.

use super::fault::{Fault, Res};
use std::collections::HashMap;
use std::rc::Rc;

/// Index of a node in [`Pickle::nodes`].
pub type Id = usize;

/// Element types of tensors we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Every dtype.
    pub const ALL: [DType; 10] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn kind(self) -> tch::Kind {
        use tch::Kind;
        match self {
            DType::F32 => Kind::Float,
            DType::F16 => Kind::Half,
            DType::BF16 => Kind::BFloat16,
            DType::F64 => Kind::Double,
            DType::I64 => Kind::Int64,
            DType::I32 => Kind::Int,
            DType::I16 => Kind::Int16,
            DType::I8 => Kind::Int8,
            DType::U8 => Kind::Uint8,
            DType::Bool => Kind::Bool,
        }
    }

    pub fn from_kind(kind: tch::Kind) -> Option<DType> {
        use tch::Kind;
        Some(match kind {
            Kind::Float => DType::F32,
            Kind::Half => DType::F16,
            Kind::BFloat16 => DType::BF16,
            Kind::Double => DType::F64,
            Kind::Int64 => DType::I64,
            Kind::Int => DType::I32,
            Kind::Int16 => DType::I16,
            Kind::Int8 => DType::I8,
            Kind::Uint8 => DType::U8,
            Kind::Bool => DType::Bool,
            _ => return None,
        })
    }

    /// torch's name: `float32`, `bfloat16`, `bool`, ...
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// safetensors' name: `F32`, `BF16`, `BOOL`, ...
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.safetensors_name() == name)
    }

    /// The `torch.*Storage` class of a storage of this dtype (`FloatStorage`, `BoolStorage`, ...),
    /// as `torch.save` names it in a storage's persistent id.
    pub fn storage_class(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F64 => "DoubleStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }
}

/// The allow-listed globals, as inert markers.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter` (as the type argument of
    /// `_rebuild_from_type_v2`, or `Parameter` under `NEWOBJ`).
    TensorClass,
    /// `torch.FloatStorage` etc.; `torch.UntypedStorage` holds bytes.
    StorageType(DType),
    /// `torch.float32` etc.
    Dtype(DType),
    CodecsEncode,
    TorchSize,
    TorchDevice,
    /// A TorchScript class (`__torch__.*`), only inside TorchScript archives (tch's `.ot`):
    /// `NEWOBJ` makes an empty [`Node::Object`] of it and `BUILD` gives it its attributes.
    ScriptClass(String),
}

/// A storage reference from a `BINPERSID` (`('storage', torch.FloatStorage, key, location, numel)`,
/// plus `view_metadata` in the legacy format).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Elements of `dtype`.
    pub numel: u64,
    /// Legacy storage views: (offset, size) in elements of the root storage `key`.
    pub view: Option<(u64, u64)>,
}

/// What `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` would build.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub dtype: DType,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64 (little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// `dict` and `collections.OrderedDict`, in insertion order (a repeated key appears twice;
    /// readers keep the last value at the first position, as Python does).
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// A TorchScript object (see [`Global::ScriptClass`]).
    Object {
        class: String,
        state: Option<Id>,
    },
    /// An allowed value we do not need (`torch.device(...)`).
    Opaque(&'static str),
}

impl Node {
    /// A short type name for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) => "int",
            Node::BigInt(_) => "int of more than 64 bits",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::Tuple(_) => "tuple",
            Node::List(_) => "list",
            Node::Dict(_) => "dict",
            Node::Global(_) => "global",
            Node::Storage(_) => "storage",
            Node::Tensor(_) => "tensor",
            Node::Object { .. } => "TorchScript object",
            Node::Opaque(n) => n,
        }
    }

    /// The type with its article, for messages: `an int`, `a tuple`, `None`.
    pub fn a_type(&self) -> String {
        match self.type_name() {
            "None" => "None".into(),
            t if t.starts_with(['a', 'e', 'i', 'o', 'u']) => format!("an {t}"),
            t => format!("a {t}"),
        }
    }
}

/// The result of unpickling: the arena and the root value.
#[derive(Debug)]
pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
    /// Byte position just after the `STOP` opcode.
    pub end: usize,
}

impl Pickle {
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id]
    }

    pub fn str(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Entries of a dict with later duplicates folded in (Python's semantics).
    pub fn dict_entries(&self, id: Id) -> Option<Vec<(Id, Id)>> {
        let Node::Dict(items) = &self.nodes[id] else {
            return None;
        };
        let mut out: Vec<(Id, Id)> = Vec::with_capacity(items.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for &(k, v) in items {
            if let Some(s) = self.str(k) {
                if let Some(&i) = index.get(s) {
                    out[i].1 = v;
                    continue;
                }
                index.insert(s.to_string(), out.len());
            }
            out.push((k, v));
        }
        Some(out)
    }

    /// The value under string key `key` of dict `id`.
    pub fn dict_get(&self, id: Id, key: &str) -> Option<Id> {
        let Node::Dict(items) = &self.nodes[id] else {
            return None;
        };
        items
            .iter()
            .rev()
            .find(|(k, _)| self.str(*k) == Some(key))
            .map(|&(_, v)| v)
    }
}

/// Options of [`unpickle`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Allow `__torch__.*` classes (TorchScript archives: tch's `.ot`).
    pub torchscript: bool,
}

/// Resolves `module.name` against the allow-list; `None`: refused.
pub fn resolve_global(module: &str, name: &str, opts: Options) -> Option<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorClass,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("torch", "Size") => Global::TorchSize,
        ("torch", "device") => Global::TorchDevice,
        ("torch", "UntypedStorage") | ("torch.storage", "UntypedStorage") => {
            Global::StorageType(DType::U8)
        }
        ("torch", storage) if storage.ends_with("Storage") => Global::StorageType(
            DType::ALL
                .into_iter()
                .find(|d| d.storage_class() == storage)?,
        ),
        ("torch", dtype) => Global::Dtype(match dtype {
            "float32" | "float" => DType::F32,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "float64" | "double" => DType::F64,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        }),
        (m, n) if opts.torchscript && (m == "__torch__" || m.starts_with("__torch__.")) => {
            Global::ScriptClass(format!("{m}.{n}"))
        }
        _ => return None,
    };
    Some(g)
}

/// The most dimensions a tensor may have (torch's own limit is 64).
pub const MAX_DIMS: usize = 64;

/// The longest storage key accepted (torch writes `0`, `1`, ... or, in the legacy format, a
/// decimal address): keys are hashed and copied once per tensor.
pub const MAX_STORAGE_KEY: usize = 1024;

/// Copy budget: items (and 8-byte words of text) an unpickling may copy from values built
/// earlier, per byte of input. Real state dicts (torchvision, timm, training checkpoints, legacy
/// files, TorchScript archives) use under 0.5.
pub const COPY_FACTOR: usize = 4;

/// The copy budget of a small input.
pub const COPY_FLOOR: usize = 1 << 16;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    metastack: Vec<Vec<Id>>,
    memo: HashMap<u64, Id>,
    opts: Options,
    /// Items copied so far (see [`COPY_FACTOR`]).
    copied: std::cell::Cell<usize>,
    copy_limit: usize,
    /// Bytes from the start of this pickle to the end of the input.
    input_len: usize,
}

/// Runs the restricted pickle machine on `data[start..]` up to its `STOP`.
///
/// Errors name the byte offset and, for a refused global, the global (the caller adds the
/// file's name and the pickle's place in it).
pub fn unpickle(data: &[u8], start: usize, opts: Options) -> Res<Pickle> {
    let input_len = data.len().saturating_sub(start);
    let mut m = Machine {
        data,
        pos: start,
        op_pos: start,
        nodes: Vec::new(),
        stack: Vec::new(),
        metastack: Vec::new(),
        memo: HashMap::new(),
        opts,
        copied: std::cell::Cell::new(0),
        copy_limit: input_len.saturating_mul(COPY_FACTOR).max(COPY_FLOOR),
        input_len,
    };
    let root = m.run()?;
    Ok(Pickle {
        nodes: m.nodes,
        root,
        end: m.pos,
    })
}

impl<'a> Machine<'a> {
    fn err<T>(&self, msg: impl std::fmt::Display) -> Res<T> {
        Err(Fault::malformed(msg.to_string()).in_pickle_at(self.op_pos))
    }

    /// Charges `items` copied items against the copy budget (see [`COPY_FACTOR`]).
    fn charge(&self, items: usize) -> Res<()> {
        let total = self.copied.get().saturating_add(items);
        self.copied.set(total);
        if total > self.copy_limit {
            let msg = format!(
                "the pickle copies more than {} items from {} bytes of input (memoized values \
                 expanded over and over): refused, a real checkpoint copies a fraction of that",
                self.copy_limit, self.input_len
            );
            return Err(Fault::over_limit(msg).in_pickle_at(self.op_pos));
        }
        Ok(())
    }

    /// Charges a copy of `bytes` bytes of text (8 bytes an item).
    fn charge_text(&self, bytes: usize) -> Res<()> {
        self.charge(1 + bytes / 8)
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.err(format!(
                "truncated (needs {n} more bytes, {} left)",
                self.data.len().saturating_sub(self.pos)
            )),
        }
    }

    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len_u64(&mut self) -> Res<usize> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| self.err(format!("length {n} too large")))
    }

    fn line(&mut self) -> Res<&'a str> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let Some(nl) = rest.iter().take(1024).position(|&b| b == b'\n') else {
            return self.err("GLOBAL name not terminated by a newline within 1024 bytes");
        };
        let s =
            std::str::from_utf8(&rest[..nl]).or_else(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += nl + 1;
        Ok(s)
    }

    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }

    fn pop(&mut self) -> Res<Id> {
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn top(&self) -> Res<Id> {
        match self.stack.last() {
            Some(&id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> Res<Vec<Id>> {
        match self.metastack.pop() {
            Some(prev) => Ok(std::mem::replace(&mut self.stack, prev)),
            None => self.err("no MARK on the stack"),
        }
    }

    fn string(&mut self, bytes: &[u8]) -> Res<()> {
        let s = std::str::from_utf8(bytes).or_else(|_| self.err("string is not valid UTF-8"))?;
        self.push(Node::Str(s.to_string()));
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Res<()> {
        // Protocol-2 pickles name Python 3's `builtins` by its Python 2 name.
        let module = if module == "__builtin__" {
            "builtins"
        } else {
            module
        };
        match resolve_global(module, name, self.opts) {
            Some(g) => {
                self.push(Node::Global(g));
                Ok(())
            }
            None => Err(Fault::refused_global(module, name).in_pickle_at(self.op_pos)),
        }
    }

    fn run(&mut self) -> Res<Id> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let root = self.pop()?;
                    return Ok(root);
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b']' => self.push(Node::List(Vec::new())),
                b')' => self.push(Node::Tuple(Vec::new())),
                b'(' => {
                    // MARK
                    let stack = std::mem::take(&mut self.stack);
                    self.metastack.push(stack);
                }
                b'0' => {
                    // POP
                    self.pop()?;
                }
                b'1' => {
                    // POP_MARK
                    self.pop_mark()?;
                }
                b'2' => {
                    // DUP
                    let top = self.top()?;
                    self.stack.push(top);
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Node::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Node::Int(v as i64));
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4
                    let n = if op == 0x8a {
                        self.u8()? as i64
                    } else {
                        self.u32()? as i32 as i64
                    };
                    if n < 0 {
                        return self.err(format!("LONG4 with a negative length ({n})"));
                    }
                    if n > 4096 {
                        return self.err(format!("integer of {n} bytes (at most 4096)"));
                    }
                    let n = n as usize;
                    let bytes = self.take(n)?;
                    if n <= 8 {
                        let mut v: i64 = 0;
                        for (i, &b) in bytes.iter().enumerate() {
                            v |= (b as i64) << (8 * i);
                        }
                        if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                            v |= -1i64 << (8 * n);
                        }
                        self.push(Node::Int(v));
                    } else {
                        self.push(Node::BigInt(bytes.to_vec()));
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Node::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let b = self.take(n)?;
                    self.string(b)?;
                }
                b'U' | b'T' => {
                    // SHORT_BINSTRING / BINSTRING (Python 2 str): latin-1 text.
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    self.push(Node::Str(b.iter().map(|&c| c as char).collect()));
                }
                b'C' | b'B' | 0x8e => {
                    // SHORT_BINBYTES / BINBYTES / BINBYTES8
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => self.u32()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.push(Node::Bytes(b.to_vec()));
                }
                b'q' | b'r' | 0x94 => {
                    // BINPUT / LONG_BINPUT / MEMOIZE
                    let idx = match op {
                        b'q' => self.u8()? as u64,
                        b'r' => self.u32()? as u64,
                        _ => self.memo.len() as u64,
                    };
                    let top = self.top()?;
                    self.memo.insert(idx, top);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    match self.memo.get(&idx) {
                        Some(&id) => self.stack.push(id),
                        None => return self.err(format!("memo index {idx} was never stored")),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(module), Node::Str(name)) =
                        (&self.nodes[module], &self.nodes[name])
                    else {
                        return self.err("STACK_GLOBAL needs two strings");
                    };
                    self.charge_text(module.len() + name.len())?;
                    let (module, name) = (module.clone(), name.clone());
                    self.global(&module, &name)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(Node::Tuple(vec![a]));
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Node::Tuple(vec![a, b]));
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Node::Tuple(vec![a, b, c]));
                }
                b'a' => {
                    let item = self.pop()?;
                    let list = self.top()?;
                    match &mut self.nodes[list] {
                        Node::List(items) => items.push(item),
                        other => {
                            let t = other.a_type();
                            return self.err(format!("APPEND to {t}"));
                        }
                    }
                }
                b'e' => {
                    let new = self.pop_mark()?;
                    let list = self.top()?;
                    match &mut self.nodes[list] {
                        Node::List(items) => items.extend(new),
                        other => {
                            let t = other.a_type();
                            return self.err(format!("APPENDS to {t}"));
                        }
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    match &mut self.nodes[dict] {
                        Node::Dict(items) => items.push((k, v)),
                        other => {
                            let t = other.a_type();
                            return self.err(format!("SETITEM on {t}"));
                        }
                    }
                }
                b'u' => {
                    let new = self.pop_mark()?;
                    if new.len() % 2 != 0 {
                        return self.err("SETITEMS with an odd number of items");
                    }
                    let dict = self.top()?;
                    match &mut self.nodes[dict] {
                        Node::Dict(items) => items.extend(new.chunks(2).map(|kv| (kv[0], kv[1]))),
                        other => {
                            let t = other.a_type();
                            return self.err(format!("SETITEMS on {t}"));
                        }
                    }
                }
                b'Q' => {
                    // BINPERSID
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(Node::Storage(Rc::new(storage)));
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let node = self.reduce(func, args, 0)?;
                    self.push(node);
                }
                0x81 => {
                    // NEWOBJ
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let node = match &self.nodes[cls] {
                        Node::Global(Global::ScriptClass(name)) => {
                            self.charge_text(name.len())?;
                            Node::Object {
                                class: name.clone(),
                                state: None,
                            }
                        }
                        Node::Global(Global::TensorClass) => {
                            // Parameter(data, requires_grad): the tensor itself.
                            let first = self.tuple(args, "Parameter")?.first().copied();
                            match first.map(|id| &self.nodes[id]) {
                                Some(Node::Tensor(t)) => Node::Tensor(Rc::clone(t)),
                                _ => return self.err("Parameter() without a tensor"),
                            }
                        }
                        other => {
                            let t = other.a_type();
                            return self.err(format!("NEWOBJ of {t} is not allowed"));
                        }
                    };
                    self.push(node);
                }
                b'b' => {
                    // BUILD
                    let state = self.pop()?;
                    let inst = self.top()?;
                    match &mut self.nodes[inst] {
                        // OrderedDict.__dict__ (the state dict's `_metadata`): not needed.
                        Node::Dict(_) => {}
                        Node::Object { state: s, .. } => *s = Some(state),
                        other => {
                            let t = other.a_type();
                            return self.err(format!("BUILD of {t} is not allowed"));
                        }
                    }
                }
                _ => {
                    return self.err(format!(
                        "unsupported pickle opcode 0x{op:02x} (only the opcodes of a plain \
                         state dict are read)"
                    ))
                }
            }
        }
    }

    /// The items of a tuple (or list), copied: charged against the copy budget.
    fn tuple(&self, id: Id, what: &str) -> Res<Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => {
                self.charge(items.len())?;
                Ok(items.clone())
            }
            other => self.err(format!("{what}: expected a tuple, got {}", other.a_type())),
        }
    }

    fn int(&self, id: Id, what: &str) -> Res<i64> {
        match &self.nodes[id] {
            Node::Int(v) => Ok(*v),
            Node::Bool(b) => Ok(*b as i64),
            other => self.err(format!("{what}: expected an int, got {}", other.a_type())),
        }
    }

    fn ints(&self, id: Id, what: &str) -> Res<Vec<i64>> {
        if let Node::Tuple(items) | Node::List(items) = &self.nodes[id] {
            if items.len() > MAX_DIMS {
                return self.err(format!(
                    "{what}: {} dimensions (at most {MAX_DIMS})",
                    items.len()
                ));
            }
        }
        let items = self.tuple(id, what)?;
        self.charge(items.len())?;
        items.iter().map(|&i| self.int(i, what)).collect()
    }

    fn persistent_load(&self, pid: Id) -> Res<StorageRef> {
        if let Node::Tuple(items) | Node::List(items) = &self.nodes[pid] {
            if !(5..=6).contains(&items.len()) {
                return self
                    .err("persistent id is not a ('storage', type, key, location, numel) tuple");
            }
        }
        let items = self.tuple(pid, "persistent id")?;
        let is_storage = matches!(items.first().map(|&i| &self.nodes[i]),
            Some(Node::Str(s)) if s == "storage");
        if !is_storage || !(5..=6).contains(&items.len()) {
            return self
                .err("persistent id is not a ('storage', type, key, location, numel) tuple");
        }
        let dtype = match &self.nodes[items[1]] {
            Node::Global(Global::StorageType(d)) => *d,
            other => {
                return self.err(format!(
                    "persistent id: expected a storage type, got {}",
                    other.a_type()
                ))
            }
        };
        let key = match &self.nodes[items[2]] {
            Node::Str(s) if s.len() > MAX_STORAGE_KEY => {
                return self.err(format!(
                    "persistent id: storage key of {} bytes (at most {MAX_STORAGE_KEY})",
                    s.len()
                ))
            }
            Node::Str(s) => {
                self.charge_text(s.len())?;
                s.clone()
            }
            Node::Int(i) => i.to_string(),
            other => return self.err(format!("persistent id: storage key is {}", other.a_type())),
        };
        let numel = self.int(items[4], "storage size")?;
        let numel =
            u64::try_from(numel).or_else(|_| self.err(format!("storage size {numel} < 0")))?;
        let mut view = None;
        if items.len() == 6 {
            match &self.nodes[items[5]] {
                Node::None => {}
                Node::Tuple(v) if v.len() == 3 => {
                    let off = self.int(v[1], "storage view offset")?;
                    let size = self.int(v[2], "storage view size")?;
                    if off < 0 || size < 0 {
                        return self.err("negative storage view offset or size");
                    }
                    view = Some((off as u64, size as u64));
                }
                _ => return self.err("persistent id: bad view metadata"),
            }
        }
        Ok(StorageRef {
            key,
            dtype,
            numel,
            view,
        })
    }

    /// `func(*args)` for the allowed callables.
    fn reduce(&mut self, func: Id, args: Id, depth: usize) -> Res<Node> {
        let g = match &self.nodes[func] {
            // (A TorchScript class cannot be called; its name is not copied.)
            Node::Global(Global::ScriptClass(name)) => {
                return self.err(format!("calling TorchScript class {name} is not allowed"))
            }
            Node::Global(g) => g.clone(),
            other => {
                let t = other.a_type();
                return self.err(format!("REDUCE: calling {t}"));
            }
        };
        let a = self.tuple(args, "REDUCE arguments")?;
        let node = match g {
            Global::OrderedDict => self.ordered_dict(&a)?,
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                self.rebuild_tensor(&g, &a)?
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                match a.first().map(|&i| &self.nodes[i]) {
                    Some(Node::Tensor(t)) => Node::Tensor(Rc::clone(t)),
                    _ => return self.err("parameter rebuild without a tensor"),
                }
            }
            Global::RebuildFromTypeV2 => {
                // (func, type, args, state): a tensor of an allowed type with Python attributes.
                if a.len() != 4 || depth > 0 {
                    return self.err("unsupported _rebuild_from_type_v2 call");
                }
                if !matches!(self.nodes[a[1]], Node::Global(Global::TensorClass)) {
                    let t = self.nodes[a[1]].a_type();
                    return self.err(format!("_rebuild_from_type_v2 of {t}"));
                }
                self.reduce(a[0], a[2], depth + 1)?
            }
            Global::CodecsEncode => self.codecs_encode(&a)?,
            Global::TorchSize => match a.first() {
                Some(&t) => {
                    let dims = self.tuple(t, "torch.Size")?;
                    self.charge(dims.len())?;
                    Node::Tuple(dims)
                }
                None => Node::Tuple(Vec::new()),
            },
            Global::TorchDevice => Node::Opaque("torch.device"),
            other => return self.err(format!("calling {other:?} is not allowed")),
        };
        Ok(node)
    }

    /// `collections.OrderedDict(pairs)`.
    fn ordered_dict(&self, a: &[Id]) -> Res<Node> {
        let mut items = Vec::new();
        if let Some(&pairs) = a.first() {
            // Each pair copied is charged (twice: the pair's tuple, then the entry).
            for p in self.tuple(pairs, "OrderedDict items")? {
                let kv = self.tuple(p, "OrderedDict item")?;
                if kv.len() != 2 {
                    return self.err("OrderedDict item is not a pair");
                }
                self.charge(2)?;
                items.push((kv[0], kv[1]));
            }
        }
        Ok(Node::Dict(items))
    }

    /// `torch._utils._rebuild_tensor{,_v2,_v3}(storage, offset, size, stride, ...)`.
    fn rebuild_tensor(&self, g: &Global, a: &[Id]) -> Res<Node> {
        let (min, max) = match g {
            Global::RebuildTensor => (4, 4),
            Global::RebuildTensorV2 => (6, 7),
            _ => (7, 8),
        };
        if a.len() < min || a.len() > max {
            return self.err(format!("tensor rebuild with {} arguments", a.len()));
        }
        let storage = match &self.nodes[a[0]] {
            Node::Storage(s) => Rc::clone(s),
            other => {
                return self.err(format!(
                    "tensor rebuild from {}, not a storage",
                    other.a_type()
                ))
            }
        };
        let offset = self.int(a[1], "storage offset")?;
        let shape = self.ints(a[2], "tensor shape")?;
        let stride = self.ints(a[3], "tensor stride")?;
        if shape.len() != stride.len() {
            return self.err(format!(
                "shape {shape:?} and stride {stride:?} differ in length"
            ));
        }
        let mut dtype = storage.dtype;
        if *g == Global::RebuildTensorV3 {
            dtype = match &self.nodes[a[6]] {
                Node::Global(Global::Dtype(d)) => *d,
                other => return self.err(format!("tensor dtype is {}", other.a_type())),
            };
        }
        let metadata = match g {
            Global::RebuildTensorV2 => a.get(6),
            Global::RebuildTensorV3 => a.get(7),
            _ => None,
        };
        if let Some(&md) = metadata {
            self.check_metadata(md)?;
        }
        Ok(Node::Tensor(Rc::new(TensorRef {
            storage,
            dtype,
            offset,
            shape,
            stride,
        })))
    }

    /// Protocol-2 bytes: `_codecs.encode(text, 'latin1')`.
    fn codecs_encode(&self, a: &[Id]) -> Res<Node> {
        let (Some(text), enc) = (a.first().and_then(|&i| self.str_of(i)), a.get(1)) else {
            return self.err("_codecs.encode without text");
        };
        let enc = enc
            .and_then(|&i| self.str_of(i))
            .unwrap_or("utf-8")
            .to_ascii_lowercase();
        self.charge_text(text.len())?;
        let bytes = match enc.as_str() {
            "latin1" | "latin-1" | "iso-8859-1" => {
                if text.chars().any(|c| c as u32 > 255) {
                    return self.err("_codecs.encode: text is not latin-1");
                }
                text.chars().map(|c| c as u8).collect()
            }
            "utf-8" | "utf8" | "ascii" => text.as_bytes().to_vec(),
            _ => return self.err(format!("_codecs.encode to {enc}")),
        };
        Ok(Node::Bytes(bytes))
    }

    fn str_of(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Tensor metadata (`{'conj': True}`, `{'neg': True}`): only an empty or all-false dict.
    fn check_metadata(&self, md: Id) -> Res<()> {
        match &self.nodes[md] {
            Node::None => Ok(()),
            Node::Dict(items) => {
                self.charge(items.len())?;
                for &(k, v) in items {
                    if !matches!(self.nodes[v], Node::Bool(false)) {
                        let k = self.str_of(k).unwrap_or("?");
                        return self.err(format!("unsupported tensor metadata `{k}`"));
                    }
                }
                Ok(())
            }
            other => self.err(format!("tensor metadata is {}", other.a_type())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::weights::fault::What;

    #[test]
    fn refuses_os_system() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        let e = unpickle(p, 0, Options::default()).unwrap_err();
        let refused = What::RefusedGlobal {
            module: "os".into(),
            name: "system".into(),
        };
        assert_eq!((e.what.clone(), e.offset), (refused, Some(2)), "{e}");
        assert!(e.to_string().contains("`os.system`"), "{e}");
    }

    #[test]
    fn ints_and_memo() {
        // [1, -2, 300, 2**40] memoized and fetched twice
        let p = b"\x80\x02]q\x00(K\x01J\xfe\xff\xff\xffM,\x01\x8a\x06\x00\x00\x00\x00\x00\x01eh\x00\x86.";
        let pk = unpickle(p, 0, Options::default()).unwrap();
        let Node::Tuple(t) = pk.node(pk.root) else {
            panic!()
        };
        assert_eq!(t[0], t[1]);
        let Node::List(l) = pk.node(t[0]) else {
            panic!()
        };
        let v: Vec<_> = l.iter().map(|&i| pk.node(i).clone()).collect();
        assert_eq!(
            v,
            vec![
                Node::Int(1),
                Node::Int(-2),
                Node::Int(300),
                Node::Int(1 << 40)
            ]
        );
    }

    #[test]
    fn nodes_are_small() {
        // The module doc's memory bound counts on it.
        assert!(
            std::mem::size_of::<Node>() <= 48,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn copies_are_bounded() {
        // OrderedDict(pairs) of one memoized tuple of 1,000 pairs, `reps` times: ~5,000 items
        // copied each time.
        let pickle = |reps: usize| {
            let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x01(".to_vec();
            p.extend(b"K\x01K\x02\x86".repeat(1_000));
            p.extend(b"tq\x000");
            p.extend(b"h\x01h\x00\x85R0".repeat(reps));
            p.extend(b"}.");
            p
        };
        // 12 times fit in the budget of a small input (COPY_FLOOR); 10,000 times (75 KB of
        // input, 50 million items) do not fit in 4 items per byte.
        unpickle(&pickle(12), 0, Options::default()).unwrap();
        let e = unpickle(&pickle(10_000), 0, Options::default()).unwrap_err();
        assert!(matches!(e.what, What::OverLimit(_)), "{e}");
        assert!(e.to_string().contains("copies more than 300"), "{e}");
    }

    #[test]
    fn truncated_and_unknown() {
        let malformed = |p: &[u8], offset: u64, want: &str| {
            let e = unpickle(p, 0, Options::default()).unwrap_err();
            assert!(matches!(e.what, What::Malformed(_)), "{e}");
            assert_eq!(e.offset, Some(offset), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        };
        malformed(b"\x80\x02]", 3, "truncated");
        malformed(b"\x80\x02\xff", 2, "0xff");
        malformed(b"", 0, "truncated");
        malformed(b"e.", 0, "MARK");
    }
}
