//! `torch.save` files: the zip format (torch >= 1.6), the legacy format (older torch or
//! `_use_new_zipfile_serialization=False`) and TorchScript archives (tch's `.ot`), all through
//! the restricted unpickler, then the state dict found inside them.
//!
//! Zip layout: `<top>/data.pkl` (the pickle), `<top>/data/<key>` (one stored entry per storage),
//! `<top>/byteorder` (`little`/`big`; absent means little), `<top>/version`; `<top>` varies.
//! Legacy layout: five pickles back to back (magic number, protocol version 1001, system info,
//! the object, the list of storage keys), then each storage in that order as an 8-byte
//! little-endian element count followed by its little-endian bytes.
//!
//! Nothing reaches libtorch before every storage size, offset, shape and stride is checked
//! against the bytes that back it (a libtorch abort could not be caught).
//!
//! Memory stays within a small multiple of the file's size: the unpickler has a copy budget
//! (see `pickle.rs`), tensors share their descriptions, each storage is copied once whatever
//! dtypes its tensors read it as, and the storages copied may not add up to more bytes than the
//! file holds (zip entries may not overlap, legacy storages follow one another).

use super::fault::{Fault, Res, Within};
use super::pickle::{self, DType, Id, Node, Pickle, TensorRef};
use super::zip::Zip;
use crate::value::{Dict, Key, Value};
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Device, Tensor};

/// A tensor description under its state-dict key.
type Named = Vec<(String, Rc<TensorRef>)>;

/// Magic number at the start of a legacy file (`torch.serialization.MAGIC_NUMBER`).
pub const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// A legacy file starts with PROTO 2, LONG1 of 10 bytes, then the magic number.
pub const LEGACY_PREFIX: [u8; 4] = [0x80, 0x02, 0x8a, 0x0a];

/// The most tensors a weight file may hold: each costs about 1-3 KiB once read (its key, its
/// description, a libtorch tensor, its row in `inspect --json`), however few bytes of the file
/// describe it (a million views of one memoized storage fit in 18 MB).
pub const MAX_TENSORS: usize = 100_000;

/// Bytes of file per tensor beyond the first [`TENSORS_FLOOR`]: a real checkpoint spends well
/// over 64 bytes on each (its key, storage reference, shape and stride).
pub const BYTES_PER_TENSOR: usize = 64;

/// Tensors any file may hold, whatever its size.
pub const TENSORS_FLOOR: usize = 4096;

/// Refuses `n` tensors from a file of `file_len` bytes when they exceed [`MAX_TENSORS`] or one
/// per [`BYTES_PER_TENSOR`] bytes (at least [`TENSORS_FLOOR`]): memory stays proportional to the
/// file.
pub fn check_tensor_count(n: usize, file_len: usize) -> Res<()> {
    let limit = (file_len / BYTES_PER_TENSOR).clamp(TENSORS_FLOOR, MAX_TENSORS);
    if n > limit {
        return Err(Fault::over_limit(format!(
            "{n} tensors in {file_len} bytes: a file may hold at most one tensor per \
             {BYTES_PER_TENSOR} bytes (at least {TENSORS_FLOOR}, at most {MAX_TENSORS}), here \
             {limit}: refused (views of shared storages repeated over and over?)"
        )));
    }
    Ok(())
}

/// Keys that wrap the state dict inside a training checkpoint, in order of preference.
pub const WRAPPER_KEYS: [&str; 6] = [
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "params",
];

/// Storage bytes by key, and how to read them.
struct Storages<'a> {
    data: HashMap<String, &'a [u8]>,
    big_endian: bool,
    /// Where a key's bytes come from, for messages (`archive/data/3`).
    origin: Box<dyn Fn(&str) -> String + 'a>,
    /// The file's length: the storages copied may not add up to more.
    file_len: usize,
}

/// Whether a zip archive is a TorchScript archive (tch's `.ot`, `torch.jit.save`).
pub fn is_torchscript(zip: &Zip) -> bool {
    zip.entries.iter().any(|e| {
        let rest = e.name.split_once('/').map(|(_, r)| r).unwrap_or("");
        rest.starts_with("code/") || rest == "constants.pkl"
    })
}

/// Reads a torch zip archive or a TorchScript archive.
/// The flag tells a TorchScript archive.
pub fn read_zip(bytes: &[u8]) -> Res<(Vec<(String, Tensor)>, bool)> {
    let archive = Archive::open(bytes)?;
    let named = if archive.torchscript {
        script_tensors(&archive.pickle, archive.pickle_len)?
    } else {
        state_dict(&archive.pickle)?
    };
    Ok((archive.materialize(named)?, archive.torchscript))
}

/// Reads a `torch.save` zip file of plain data (a checkpoint: nested dicts, lists, numbers,
/// strings and tensors) as a [`Value`], through the same restricted unpickler and checks as
/// [`read_zip`].
pub fn read_zip_value(bytes: &[u8]) -> Res<Value> {
    let archive = Archive::open(bytes)?;
    if archive.torchscript {
        return Err(Fault::malformed(
            "a TorchScript archive, not a torch.save file of plain data",
        ));
    }
    let pk = &archive.pickle;
    let mut named = Vec::new();
    collect_tensors(pk, pk.root, 0, &mut named)?;
    let mut tensors = archive.materialize(named)?.into_iter().map(|(_, t)| t);
    to_value(pk, pk.root, &mut tensors)
}

/// How deep a checkpoint's containers may nest.
const MAX_VALUE_DEPTH: usize = 32;

/// The tensors under `id`, depth first, named by their order.
fn collect_tensors(pk: &Pickle, id: Id, depth: usize, out: &mut Named) -> Res<()> {
    if depth > MAX_VALUE_DEPTH {
        return Err(Fault::malformed(format!(
            "containers nest more than {MAX_VALUE_DEPTH} levels deep"
        )));
    }
    match pk.node(id) {
        Node::Tensor(t) => out.push((format!("tensor {}", out.len()), Rc::clone(t))),
        Node::Tuple(items) | Node::List(items) => {
            for &i in items {
                collect_tensors(pk, i, depth + 1, out)?;
            }
        }
        Node::Dict(_) => {
            for (k, v) in pk.dict_entries(id).unwrap_or_default() {
                collect_tensors(pk, k, depth + 1, out)?;
                collect_tensors(pk, v, depth + 1, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The value of `id`, taking its tensors from `tensors` in [`collect_tensors`]'s order.
fn to_value(pk: &Pickle, id: Id, tensors: &mut impl Iterator<Item = Tensor>) -> Res<Value> {
    let mut seq = |items: &[Id]| -> Res<Vec<Value>> {
        items.iter().map(|&i| to_value(pk, i, tensors)).collect()
    };
    Ok(match pk.node(id) {
        Node::None => Value::None,
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::Int(*i),
        Node::Float(f) => Value::Float(*f),
        Node::Str(s) => Value::Str(s.clone()),
        Node::Tuple(items) => Value::Tuple(seq(items)?),
        Node::List(items) => Value::List(seq(items)?),
        Node::Tensor(_) => Value::Tensor(
            tensors
                .next()
                .ok_or_else(|| Fault::malformed("a tensor was not materialized"))?,
        ),
        Node::Dict(_) => {
            let mut d = Dict::new();
            for (k, v) in pk.dict_entries(id).unwrap_or_default() {
                let key = match pk.node(k) {
                    Node::Str(s) => Key::Str(s.clone()),
                    Node::Int(i) => Key::Int(*i),
                    other => {
                        return Err(Fault::malformed(format!(
                            "a dict key is {} (keys must be strings or ints)",
                            other.a_type()
                        )))
                    }
                };
                d.insert(key, to_value(pk, v, tensors)?);
            }
            Value::Dict(d)
        }
        other => {
            return Err(Fault::malformed(format!(
                "the file holds {}, which a checkpoint does not",
                other.a_type()
            )))
        }
    })
}

/// An opened torch zip archive: its pickle, unpickled, and where its storages are.
struct Archive<'a> {
    zip: Zip<'a>,
    top: String,
    pickle: Pickle,
    pickle_len: usize,
    torchscript: bool,
    big_endian: bool,
    file_len: usize,
}

impl<'a> Archive<'a> {
    fn open(bytes: &'a [u8]) -> Res<Archive<'a>> {
        let zip = Zip::parse(bytes)?;
        let first = zip
            .entries
            .first()
            .ok_or_else(|| Fault::malformed("zip archive has no entries"))?;
        let top = first.name.split('/').next().unwrap_or("").to_string();
        let pkl_name = format!("{top}/data.pkl");
        let pkl = zip.find(&pkl_name).ok_or_else(|| {
            Fault::malformed(format!(
                "no {pkl_name} in the zip archive: not a torch.save file"
            ))
        })?;
        let pkl = zip.read(pkl)?;
        let torchscript = is_torchscript(&zip);
        let big_endian = zip_big_endian(&zip, &top)?;
        let pickle =
            pickle::unpickle(pkl, 0, pickle::Options { torchscript }).within(|| pkl_name)?;
        Ok(Archive {
            pickle,
            pickle_len: pkl.len(),
            torchscript,
            big_endian,
            file_len: bytes.len(),
            zip,
            top,
        })
    }

    /// The tensors `named`, from the storages they reference (each CRC-checked).
    fn materialize(&self, named: Named) -> Res<Vec<(String, Tensor)>> {
        let mut data = HashMap::new();
        for (_, t) in &named {
            let key = &t.storage.key;
            if !data.contains_key(key) {
                let name = format!("{}/data/{key}", self.top);
                let e = self.zip.find(&name).ok_or_else(|| {
                    Fault::malformed(format!("storage {name} is missing from the archive"))
                })?;
                data.insert(key.clone(), self.zip.read(e)?);
            }
        }
        let top = self.top.clone();
        let origin = move |key: &str| format!("{top}/data/{key}");
        materialize(
            named,
            Storages {
                data,
                big_endian: self.big_endian,
                origin: Box::new(origin),
                file_len: self.file_len,
            },
        )
    }
}

/// Whether the archive's storages are big-endian (`<top>/byteorder`; absent means little).
fn zip_big_endian(zip: &Zip, top: &str) -> Res<bool> {
    let Some(e) = zip.find(&format!("{top}/byteorder")) else {
        return Ok(false);
    };
    match zip.read(e)? {
        b"little" => Ok(false),
        b"big" => Ok(true),
        other => {
            let s = String::from_utf8_lossy(&other[..other.len().min(16)]);
            Err(Fault::malformed(format!(
                "{top}/byteorder is `{s}`, not `little` or `big`"
            )))
        }
    }
}

/// Reads a legacy-format torch file.
pub fn read_legacy(bytes: &[u8]) -> Res<Vec<(String, Tensor)>> {
    let opts = pickle::Options::default();
    let header_end = legacy_header(bytes)?;
    let main = pickle::unpickle(bytes, header_end, opts)?;
    let named = state_dict(&main)?;
    let keys =
        pickle::unpickle(bytes, main.end, opts).within(|| "legacy storage key list".into())?;
    let Node::List(key_ids) = keys.node(keys.root) else {
        return Err(Fault::malformed("legacy storage key list is not a list"));
    };
    let mut key_list = Vec::with_capacity(key_ids.len());
    for &k in key_ids {
        let key = keys
            .str(k)
            .ok_or_else(|| Fault::malformed("legacy storage key is not a string"))?;
        key_list.push(key);
    }
    let data = legacy_storages(bytes, keys.end, &key_list, &declared_storages(&main))?;
    let origin = |key: &str| format!("legacy storage {key}");
    materialize(
        named,
        Storages {
            data,
            big_endian: false,
            origin: Box::new(origin),
            file_len: bytes.len(),
        },
    )
}

/// Checks the three pickles before a legacy file's object (the magic number, protocol version
/// 1001, system info); returns where the object's pickle begins.
fn legacy_header(bytes: &[u8]) -> Res<usize> {
    let opts = pickle::Options::default();
    let magic = pickle::unpickle(bytes, 0, opts).within(|| "legacy magic number".into())?;
    let ok = match magic.node(magic.root) {
        Node::BigInt(b) if b.len() <= 16 => {
            let mut v = [0u8; 16];
            v[..b.len()].copy_from_slice(b);
            u128::from_le_bytes(v) == LEGACY_MAGIC
        }
        _ => false,
    };
    if !ok {
        return Err(Fault::malformed("bad magic number for a legacy torch file"));
    }
    let proto =
        pickle::unpickle(bytes, magic.end, opts).within(|| "legacy protocol version".into())?;
    if proto.node(proto.root) != &Node::Int(1001) {
        return Err(Fault::malformed("legacy protocol version is not 1001"));
    }
    let sys_info =
        pickle::unpickle(bytes, proto.end, opts).within(|| "legacy system info".into())?;
    Ok(sys_info.end)
}

/// Storage dtypes and sizes as the pickle declares them, for every storage in the file (a
/// checkpoint's optimizer state has storages outside the state dict); `u64::MAX` elements when
/// only (long obsolete) views of a storage tell nothing of its root's size.
fn declared_storages(main: &Pickle) -> HashMap<&str, (DType, u64)> {
    let mut declared: HashMap<&str, (DType, u64)> = HashMap::new();
    for node in &main.nodes {
        if let Node::Storage(s) = node {
            let entry = declared
                .entry(s.key.as_str())
                .or_insert((s.dtype, u64::MAX));
            if s.view.is_none() {
                entry.1 = s.numel;
            }
        }
    }
    declared
}

/// The bytes of a legacy file's storages, which follow one another from `pos` in the order of
/// `keys`, each as an 8-byte little-endian element count and its elements.
fn legacy_storages<'a>(
    bytes: &'a [u8],
    mut pos: usize,
    keys: &[&str],
    declared: &HashMap<&str, (DType, u64)>,
) -> Res<HashMap<String, &'a [u8]>> {
    let mut data = HashMap::new();
    for &key in keys {
        let bad = |msg: String| Fault::malformed(format!("legacy storage {key}: {msg}"));
        let Some(&(dtype, numel)) = declared.get(key) else {
            return Err(Fault::malformed(format!(
                "legacy storage {key} is listed but no tensor uses it"
            )));
        };
        let head = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| bad("element count past the end of the file (truncated)".into()))?;
        let count = u64::from_le_bytes(head.try_into().unwrap());
        pos += 8;
        if count != numel && numel != u64::MAX {
            return Err(bad(format!(
                "element count {count} in the file, {numel} in the pickle"
            )));
        }
        let len = count
            .checked_mul(dtype.size() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= bytes.len() - pos)
            .ok_or_else(|| {
                bad(format!(
                    "{count} elements past the end of the file (truncated)"
                ))
            })?;
        data.insert(key.to_string(), &bytes[pos..pos + len]);
        pos += len;
    }
    Ok(data)
}

fn describe(pk: &Pickle, id: Id) -> String {
    match pk.node(id) {
        Node::Dict(items) => {
            let keys: Vec<String> = items
                .iter()
                .take(12)
                .map(|&(k, _)| {
                    pk.str(k)
                        .map(|s| format!("{s:?}"))
                        .unwrap_or_else(|| "?".into())
                })
                .collect();
            format!(
                "a dict with keys [{}{}]",
                keys.join(", "),
                if items.len() > 12 { ", ..." } else { "" }
            )
        }
        n => n.a_type(),
    }
}

/// Finds the state dict in a checkpoint: the top-level dict, or one under a wrapper key
/// ([`WRAPPER_KEYS`]).
pub fn state_dict(pk: &Pickle) -> Res<Named> {
    let mut id = pk.root;
    for _depth in 0..4 {
        let Some(entries) = pk.dict_entries(id) else {
            return Err(Fault::malformed(format!(
                "the file holds {}, not a state dict",
                describe(pk, id)
            )));
        };
        let has_tensors = entries
            .iter()
            .any(|&(_, v)| matches!(pk.node(v), Node::Tensor(_)));
        let wrapper = WRAPPER_KEYS
            .iter()
            .filter_map(|k| pk.dict_get(id, k))
            .find(|&v| matches!(pk.node(v), Node::Dict(_)));
        match (has_tensors, wrapper) {
            (false, Some(inner)) => id = inner,
            (true, _) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let key = match pk.node(k) {
                        Node::Str(s) => s.clone(),
                        other => {
                            return Err(Fault::malformed(format!(
                                "state dict key is {} (keys must be strings)",
                                other.a_type()
                            )))
                        }
                    };
                    match pk.node(v) {
                        Node::Tensor(t) => out.push((key, Rc::clone(t))),
                        other => {
                            return Err(Fault::malformed(format!(
                                "state dict entry {key:?} is {}, not a tensor",
                                other.a_type()
                            )))
                        }
                    }
                }
                return Ok(out);
            }
            (false, None) => {
                return Err(Fault::malformed(format!(
                    "no state dict found: the file holds {} (looked for tensors or one of the keys {:?})",
                    describe(pk, id),
                    WRAPPER_KEYS
                )))
            }
        }
    }
    Err(Fault::malformed(
        "no state dict found within 4 levels of wrapping",
    ))
}

/// Drops `module.` (DataParallel/DDP) when every key starts with it.
pub fn strip_module_prefix<T>(v: Vec<(String, T)>) -> Vec<(String, T)> {
    if v.is_empty() || !v.iter().all(|(k, _)| k.starts_with("module.")) {
        return v;
    }
    v.into_iter()
        .map(|(k, t)| (k["module.".len()..].to_string(), t))
        .collect()
}

/// Tensors of a TorchScript archive: the attributes of the root object, nested objects
/// flattened with `.`; tch's `.ot` names (`features|0|weight`) get their dots back.
///
/// Objects and attribute dicts may be shared, and names grow with nesting, so the names built
/// and entries walked are charged against a budget of `pickle::COPY_FACTOR` 8-byte words per
/// byte of the pickle (`pkl_len`).
fn script_tensors(pk: &Pickle, pkl_len: usize) -> Res<Named> {
    let limit = pkl_len
        .saturating_mul(pickle::COPY_FACTOR)
        .max(pickle::COPY_FLOOR)
        .saturating_mul(8);
    let mut spent = 0usize;
    let mut charge = |bytes: usize| {
        spent = spent.saturating_add(bytes);
        if spent > limit {
            return Err(Fault::over_limit(format!(
                "TorchScript archive: attribute names and entries add up to more than {limit} \
                 bytes from a pickle of {pkl_len} bytes (shared objects expanded over and over): \
                 refused"
            )));
        }
        Ok(())
    };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(String::new(), pk.root, 0usize)];
    while let Some((prefix, id, depth)) = stack.pop() {
        if depth > 64 || !seen.insert(id) {
            continue;
        }
        let state = match pk.node(id) {
            Node::Object { state: Some(s), .. } => *s,
            Node::Object { state: None, class } => {
                return Err(Fault::malformed(format!(
                    "TorchScript object {class} has no state"
                )))
            }
            other => {
                return Err(Fault::malformed(format!(
                    "TorchScript archive holds {}",
                    other.a_type()
                )))
            }
        };
        if let Node::Dict(items) = pk.node(state) {
            charge(items.len().saturating_mul(16))?;
        }
        let Some(entries) = pk.dict_entries(state) else {
            return Err(Fault::malformed(
                "TorchScript object state is not a dict of attributes",
            ));
        };
        // Children pushed in reverse so the output keeps the attribute order.
        let mut children = Vec::new();
        for (k, v) in entries {
            let Some(name) = pk.str(k) else { continue };
            if !matches!(pk.node(v), Node::Tensor(_) | Node::Object { .. }) {
                continue;
            }
            charge(prefix.len() + name.len() + 64)?;
            let full = if prefix.is_empty() {
                name.replace('|', ".")
            } else {
                format!("{prefix}.{name}")
            };
            match pk.node(v) {
                Node::Tensor(t) => out.push((full, Rc::clone(t))),
                _ => children.push((full, v, depth + 1)),
            }
        }
        stack.extend(children.into_iter().rev());
    }
    if out.is_empty() {
        return Err(Fault::malformed("TorchScript archive holds no tensors"));
    }
    Ok(out)
}

/// Checks that a tensor view fits in `avail` elements; returns its element count.
pub fn check_view(offset: i64, shape: &[i64], stride: &[i64], avail: u64) -> Res<u64> {
    if offset < 0 {
        return Err(Fault::malformed(format!(
            "negative storage offset {offset}"
        )));
    }
    if let Some(d) = shape.iter().find(|&&d| d < 0) {
        return Err(Fault::malformed(format!(
            "negative dimension {d} in shape {shape:?}"
        )));
    }
    if let Some(s) = stride.iter().find(|&&s| s < 0) {
        return Err(Fault::malformed(format!(
            "negative stride {s} in {stride:?}"
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| Fault::malformed(format!("shape {shape:?} has too many elements")))?;
    if numel == 0 {
        if offset as u64 > avail {
            return Err(Fault::malformed(format!(
                "storage offset {offset} past the end of a storage of {avail} elements"
            )));
        }
        return Ok(0);
    }
    let last = shape
        .iter()
        .zip(stride)
        .try_fold(offset as u128, |acc, (&d, &s)| {
            acc.checked_add((d as u128 - 1) * s as u128)
        });
    match last {
        Some(last) if last < avail as u128 => {}
        _ => {
            return Err(Fault::malformed(format!(
                "shape {shape:?} with stride {stride:?} at storage offset {offset} does not fit in \
                 a storage of {avail} elements"
            )))
        }
    }
    // A view may not hold more elements than its storage (stride-0 expansions would let a few
    // bytes of file turn into terabytes once made contiguous).
    if numel > avail {
        return Err(Fault::over_limit(format!(
            "shape {shape:?} has {numel} elements, more than its storage's {avail}: overlapping views are not supported"
        )));
    }
    Ok(numel)
}

/// The bytes of one storage, to be checked and byte-swapped as `dtype` (its tensors may view it
/// as other dtypes of the same element size, or of any size in a little-endian file).
pub struct Part<'a> {
    pub bytes: &'a [u8],
    pub dtype: DType,
}

/// Storages copied into one fresh CPU buffer: the one copy of a load, in one allocation.
pub struct Packed {
    buf: Tensor,
    /// `buf` viewed as each part's dtype.
    typed: HashMap<DType, Tensor>,
    /// Each part's start in bytes (a multiple of 64).
    starts: Vec<usize>,
}

/// Copies `parts` into one buffer, each at a 64-byte aligned offset (byte-swapped to native
/// order if `big_endian`). Checks first that each part is whole elements and that bools are
/// 0 or 1; the `Err` names the part's index.
pub fn pack(parts: &[Part], big_endian: bool) -> Result<Packed, (usize, Fault)> {
    let mut offsets = Vec::with_capacity(parts.len());
    let mut total = 0usize;
    for (i, p) in parts.iter().enumerate() {
        let esize = p.dtype.size();
        if p.bytes.len() % esize != 0 {
            let msg = format!(
                "{} bytes is not a whole number of {} elements",
                p.bytes.len(),
                p.dtype.name()
            );
            return Err((i, Fault::malformed(msg)));
        }
        if p.dtype == DType::Bool {
            check_bools(p.bytes).map_err(|e| (i, e))?;
        }
        offsets.push(total);
        total = (total + p.bytes.len()).div_ceil(64) * 64;
    }
    let buf = Tensor::f_empty([total as i64], (tch::Kind::Uint8, Device::Cpu))
        .map_err(|e| (0, e.into()))?;
    if total > 0 {
        // SAFETY: `buf` is a freshly allocated contiguous CPU tensor of exactly `total` bytes,
        // not shared with anything yet; byte copies have no alignment requirement.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.data_ptr() as *mut u8, total) };
        for (p, &off) in parts.iter().zip(&offsets) {
            let region = &mut dst[off..off + p.bytes.len()];
            region.copy_from_slice(p.bytes);
            if big_endian && p.dtype.size() > 1 {
                for chunk in region.chunks_exact_mut(p.dtype.size()) {
                    chunk.reverse();
                }
            }
        }
    }
    let mut typed = HashMap::new();
    for p in parts {
        if let std::collections::hash_map::Entry::Vacant(slot) = typed.entry(p.dtype) {
            // `total` is a multiple of 64, so every dtype view is whole.
            let t = buf
                .f_view_dtype(p.dtype.kind())
                .map_err(|e| (0, e.into()))?;
            slot.insert(t);
        }
    }
    Ok(Packed {
        buf,
        typed,
        starts: offsets,
    })
}

/// Bool storage bytes must be 0 or 1 (anything else is undefined behaviour in libtorch).
fn check_bools(bytes: &[u8]) -> Res<()> {
    match bytes.iter().find(|&&b| b > 1) {
        Some(b) => Err(Fault::malformed(format!(
            "invalid bool value {b} (must be 0 or 1)"
        ))),
        None => Ok(()),
    }
}

impl Packed {
    /// A strided view into part `part` (already checked with [`check_view`]).
    pub fn view(
        &self,
        part: usize,
        dtype: DType,
        offset: i64,
        shape: &[i64],
        stride: &[i64],
    ) -> Res<Tensor> {
        // Parts start 64-byte aligned and `buf` is a multiple of 64 bytes: every dtype divides.
        let start = (self.starts[part] / dtype.size()) as i64 + offset;
        let t = match self.typed.get(&dtype) {
            Some(t) => t.f_as_strided(shape, stride, Some(start)),
            None => self
                .buf
                .f_view_dtype(dtype.kind())
                .and_then(|t| t.f_as_strided(shape, stride, Some(start))),
        }?;
        Ok(t)
    }
}

/// Builds the tensors: every storage checked, then copied once into one buffer, then strided
/// views into it.
fn materialize(named: Named, storages: Storages) -> Res<Vec<(String, Tensor)>> {
    check_tensor_count(named.len(), storages.file_len)?;
    for (key, t) in &named {
        check_tensor(key, t, &storages)?;
    }
    let uses = StorageUses::of(&named);
    let parts = storage_parts(&uses, &storages)?;
    let packed = pack(&parts, storages.big_endian)
        .map_err(|(i, e)| e.within((storages.origin)(uses.keys[i].0)))?;
    let mut out = Vec::with_capacity(named.len());
    for (key, t) in &named {
        let s = &t.storage;
        let part = uses.index[s.key.as_str()];
        let view_off = s
            .view
            .map(|(o, _)| o * s.dtype.size() as u64 / t.dtype.size() as u64);
        let offset = t.offset + view_off.unwrap_or(0) as i64;
        let v = packed
            .view(part, t.dtype, offset, &t.shape, &t.stride)
            .within(|| key.clone())?;
        out.push((key.clone(), v));
    }
    Ok(out)
}

/// Checks that tensor `key` fits in the bytes of its storage: the storage is there with the
/// size the pickle declares, a storage view lies within it, and the tensor's view within that.
fn check_tensor(key: &str, t: &TensorRef, storages: &Storages) -> Res<()> {
    let s = &t.storage;
    let origin = || (storages.origin)(&s.key);
    let bytes = storages
        .data
        .get(&s.key)
        .ok_or_else(|| Fault::malformed(format!("storage {} is missing", origin())))?;
    let declared = s.numel.checked_mul(s.dtype.size() as u64);
    if declared != Some(bytes.len() as u64) && s.view.is_none() {
        return Err(Fault::malformed(format!(
            "{}: the pickle declares {} {} elements, the file holds {} bytes",
            origin(),
            s.numel,
            s.dtype.name(),
            bytes.len()
        )));
    }
    let (mut offset, mut avail_bytes) = (0u64, bytes.len() as u64);
    if let Some((voff, vsize)) = s.view {
        let esize = s.dtype.size() as u64;
        let end = voff.checked_add(vsize).and_then(|e| e.checked_mul(esize));
        if !matches!(end, Some(e) if e <= bytes.len() as u64) {
            return Err(Fault::malformed(format!(
                "{}: storage view out of range",
                origin()
            )));
        }
        offset = voff * esize;
        avail_bytes = vsize * esize;
    }
    if offset % t.dtype.size() as u64 != 0 {
        return Err(Fault::malformed(format!(
            "{key}: storage view not aligned to {}",
            t.dtype.name()
        )));
    }
    let avail = avail_bytes / t.dtype.size() as u64;
    check_view(t.offset, &t.shape, &t.stride, avail).within(|| key.to_string())?;
    Ok(())
}

/// The storages the tensors use, in first-use order, with the dtypes each is read as.
struct StorageUses<'a> {
    keys: Vec<(&'a str, Vec<DType>)>,
    /// Position in `keys` by storage key.
    index: HashMap<&'a str, usize>,
}

impl<'a> StorageUses<'a> {
    fn of(named: &'a Named) -> StorageUses<'a> {
        let mut uses = StorageUses {
            keys: Vec::new(),
            index: HashMap::new(),
        };
        for (_, t) in named {
            let key = t.storage.key.as_str();
            let i = *uses.index.entry(key).or_insert_with(|| {
                uses.keys.push((key, Vec::new()));
                uses.keys.len() - 1
            });
            if !uses.keys[i].1.contains(&t.dtype) {
                uses.keys[i].1.push(t.dtype);
            }
        }
        uses
    }
}

/// One part per storage, whatever dtypes its tensors read it as, so a storage is copied once:
/// the copies add up to no more than the file's bytes (checked).
fn storage_parts<'a>(uses: &StorageUses, storages: &Storages<'a>) -> Res<Vec<Part<'a>>> {
    let mut parts = Vec::with_capacity(uses.keys.len());
    let mut total = 0usize;
    for (key, dtypes) in &uses.keys {
        let bytes = storages.data[*key];
        let dtype =
            part_dtype(bytes, dtypes, storages.big_endian).within(|| (storages.origin)(key))?;
        let usable = bytes.len() - bytes.len() % dtype.size();
        total = total.saturating_add(usable);
        parts.push(Part {
            bytes: &bytes[..usable],
            dtype,
        });
    }
    if total > storages.file_len {
        return Err(Fault::over_limit(format!(
            "the storages add up to {total} bytes, more than the file's {} bytes: storages \
             that share bytes are refused",
            storages.file_len
        )));
    }
    Ok(parts)
}

/// The dtype a storage read as `dtypes` is copied (and byte-swapped) as: its one dtype; bytes
/// when a little-endian storage is read as several; any of them (of one size) in a big-endian
/// file. Bools are checked whichever it is.
fn part_dtype(bytes: &[u8], dtypes: &[DType], big_endian: bool) -> Res<DType> {
    if let [only] = dtypes[..] {
        return Ok(only);
    }
    let other_size = dtypes.iter().find(|d| d.size() != dtypes[0].size());
    if let (true, Some(other)) = (big_endian, other_size) {
        return Err(Fault::malformed(format!(
            "read as {} and {} in a big-endian file: a storage viewed as dtypes of different \
             sizes cannot be byte-swapped",
            dtypes[0].name(),
            other.name()
        )));
    }
    if dtypes.contains(&DType::Bool) {
        check_bools(bytes)?;
    }
    Ok(match big_endian {
        // Swapped by element size: any of them (the sizes agree).
        true => *dtypes.iter().find(|&&d| d != DType::Bool).unwrap(),
        false => DType::U8,
    })
}
