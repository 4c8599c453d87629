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

use super::pickle::{self, DType, Id, Node, Pickle, TensorRef};
use super::zip::Zip;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Device, Tensor};

/// A tensor description under its state-dict key.
type Named = Vec<(String, Rc<TensorRef>)>;

/// Magic number at the start of a legacy file (`torch.serialization.MAGIC_NUMBER`).
pub const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// A legacy file starts with PROTO 2, LONG1 of 10 bytes, then the magic number.
pub const LEGACY_PREFIX: [u8; 4] = [0x80, 0x02, 0x8a, 0x0a];

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
pub fn read_zip(bytes: &[u8]) -> Result<(Vec<(String, Tensor)>, bool), String> {
    let zip = Zip::parse(bytes)?;
    let first = zip.entries.first().ok_or("zip archive has no entries")?;
    let top = first.name.split('/').next().unwrap_or("").to_string();
    let pkl_name = format!("{top}/data.pkl");
    let pkl = zip
        .find(&pkl_name)
        .ok_or_else(|| format!("no {pkl_name} in the zip archive: not a torch.save file"))?;
    let pkl = zip.read(pkl)?;
    let torchscript = is_torchscript(&zip);
    let big_endian = match zip.find(&format!("{top}/byteorder")) {
        None => false,
        Some(e) => match zip.read(e)? {
            b"little" => false,
            b"big" => true,
            other => {
                let s = String::from_utf8_lossy(&other[..other.len().min(16)]);
                return Err(format!("{top}/byteorder is `{s}`, not `little` or `big`"));
            }
        },
    };
    let pk = pickle::unpickle(pkl, 0, pickle::Options { torchscript })
        .map_err(|e| format!("{pkl_name}: {e}"))?;
    let named = if torchscript {
        script_tensors(&pk, pkl.len())?
    } else {
        state_dict(&pk)?
    };
    // Storages actually referenced, CRC-checked.
    let mut data = HashMap::new();
    for (_, t) in &named {
        let key = &t.storage.key;
        if !data.contains_key(key) {
            let name = format!("{top}/data/{key}");
            let e = zip
                .find(&name)
                .ok_or_else(|| format!("storage {name} is missing from the archive"))?;
            data.insert(key.clone(), zip.read(e)?);
        }
    }
    let origin = move |key: &str| format!("{top}/data/{key}");
    let tensors = materialize(
        named,
        Storages {
            data,
            big_endian,
            origin: Box::new(origin),
            file_len: bytes.len(),
        },
    )?;
    Ok((tensors, torchscript))
}

/// Reads a legacy-format torch file.
pub fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let opts = pickle::Options::default();
    let magic =
        pickle::unpickle(bytes, 0, opts).map_err(|e| format!("legacy magic number: {e}"))?;
    let ok = match magic.node(magic.root) {
        Node::BigInt(b) if b.len() <= 16 => {
            let mut v = [0u8; 16];
            v[..b.len()].copy_from_slice(b);
            u128::from_le_bytes(v) == LEGACY_MAGIC
        }
        _ => false,
    };
    if !ok {
        return Err("bad magic number for a legacy torch file".into());
    }
    let proto = pickle::unpickle(bytes, magic.end, opts)
        .map_err(|e| format!("legacy protocol version: {e}"))?;
    if proto.node(proto.root) != &Node::Int(1001) {
        return Err("legacy protocol version is not 1001".into());
    }
    let sys_info =
        pickle::unpickle(bytes, proto.end, opts).map_err(|e| format!("legacy system info: {e}"))?;
    let main = pickle::unpickle(bytes, sys_info.end, opts)?;
    let named = state_dict(&main)?;
    let keys = pickle::unpickle(bytes, main.end, opts)
        .map_err(|e| format!("legacy storage key list: {e}"))?;
    let Node::List(key_ids) = keys.node(keys.root) else {
        return Err("legacy storage key list is not a list".into());
    };
    // Storage dtypes and sizes as the pickle declares them, for every storage in the file
    // (a checkpoint's optimizer state has storages outside the state dict).
    let mut declared: HashMap<&str, (DType, u64)> = HashMap::new();
    for node in &main.nodes {
        if let Node::Storage(s) = node {
            // A (long obsolete) storage view does not tell its root's size.
            let entry = declared
                .entry(s.key.as_str())
                .or_insert((s.dtype, u64::MAX));
            if s.view.is_none() {
                entry.1 = s.numel;
            }
        }
    }
    let mut data = HashMap::new();
    let mut pos = keys.end;
    for &k in key_ids {
        let key = keys.str(k).ok_or("legacy storage key is not a string")?;
        let Some(&(dtype, numel)) = declared.get(key) else {
            return Err(format!(
                "legacy storage {key} is listed but no tensor uses it"
            ));
        };
        let elem_size = dtype.size() as u64;
        let head = bytes.get(pos..pos + 8).ok_or_else(|| {
            format!("legacy storage {key}: element count past the end of the file (truncated)")
        })?;
        let count = u64::from_le_bytes(head.try_into().unwrap());
        pos += 8;
        if count != numel && numel != u64::MAX {
            return Err(format!(
                "legacy storage {key}: element count {count} in the file, {numel} in the pickle"
            ));
        }
        let len = count
            .checked_mul(elem_size)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= bytes.len() - pos)
            .ok_or_else(|| {
                format!(
                    "legacy storage {key}: {count} elements past the end of the file (truncated)"
                )
            })?;
        data.insert(key.to_string(), &bytes[pos..pos + len]);
        pos += len;
    }
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
        n => format!("a {}", n.type_name()),
    }
}

/// Finds the state dict in a checkpoint: the top-level dict, or one under a wrapper key
/// ([`WRAPPER_KEYS`]).
pub fn state_dict(pk: &Pickle) -> Result<Named, String> {
    let mut id = pk.root;
    for _depth in 0..4 {
        let Some(entries) = pk.dict_entries(id) else {
            return Err(format!(
                "the file holds {}, not a state dict",
                describe(pk, id)
            ));
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
                            return Err(format!(
                                "state dict key is a {} (keys must be strings)",
                                other.type_name()
                            ))
                        }
                    };
                    match pk.node(v) {
                        Node::Tensor(t) => out.push((key, Rc::clone(t))),
                        other => {
                            return Err(format!(
                                "state dict entry {key:?} is a {}, not a tensor",
                                other.type_name()
                            ))
                        }
                    }
                }
                return Ok(out);
            }
            (false, None) => {
                return Err(format!(
                    "no state dict found: the file holds {} (looked for tensors or one of the keys {:?})",
                    describe(pk, id),
                    WRAPPER_KEYS
                ))
            }
        }
    }
    Err("no state dict found within 4 levels of wrapping".into())
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
fn script_tensors(pk: &Pickle, pkl_len: usize) -> Result<Named, String> {
    let limit = pkl_len
        .saturating_mul(pickle::COPY_FACTOR)
        .max(pickle::COPY_FLOOR)
        .saturating_mul(8);
    let mut spent = 0usize;
    let mut charge = |bytes: usize| {
        spent = spent.saturating_add(bytes);
        if spent > limit {
            return Err(format!(
                "TorchScript archive: attribute names and entries add up to more than {limit} \
                 bytes from a pickle of {pkl_len} bytes (shared objects expanded over and over): \
                 refused"
            ));
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
                return Err(format!("TorchScript object {class} has no state"))
            }
            other => return Err(format!("TorchScript archive holds a {}", other.type_name())),
        };
        if let Node::Dict(items) = pk.node(state) {
            charge(items.len().saturating_mul(16))?;
        }
        let Some(entries) = pk.dict_entries(state) else {
            return Err("TorchScript object state is not a dict of attributes".into());
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
        return Err("TorchScript archive holds no tensors".into());
    }
    Ok(out)
}

/// Checks that a tensor view fits in `avail` elements; returns its element count.
pub fn check_view(offset: i64, shape: &[i64], stride: &[i64], avail: u64) -> Result<u64, String> {
    if offset < 0 {
        return Err(format!("negative storage offset {offset}"));
    }
    if let Some(d) = shape.iter().find(|&&d| d < 0) {
        return Err(format!("negative dimension {d} in shape {shape:?}"));
    }
    if let Some(s) = stride.iter().find(|&&s| s < 0) {
        return Err(format!("negative stride {s} in {stride:?}"));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("shape {shape:?} has too many elements"))?;
    if numel == 0 {
        if offset as u64 > avail {
            return Err(format!(
                "storage offset {offset} past the end of a storage of {avail} elements"
            ));
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
            return Err(format!(
                "shape {shape:?} with stride {stride:?} at storage offset {offset} does not fit in \
                 a storage of {avail} elements"
            ))
        }
    }
    // A view may not hold more elements than its storage (stride-0 expansions would let a few
    // bytes of file turn into terabytes once made contiguous).
    if numel > avail {
        return Err(format!(
            "shape {shape:?} has {numel} elements, more than its storage's {avail}: overlapping views are not supported"
        ));
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
pub fn pack(parts: &[Part], big_endian: bool) -> Result<Packed, (usize, String)> {
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
            return Err((i, msg));
        }
        if p.dtype == DType::Bool {
            if let Some(b) = p.bytes.iter().find(|&&b| b > 1) {
                return Err((i, format!("invalid bool value {b} (must be 0 or 1)")));
            }
        }
        offsets.push(total);
        total = (total + p.bytes.len()).div_ceil(64) * 64;
    }
    let buf = Tensor::f_empty([total as i64], (tch::Kind::Uint8, Device::Cpu))
        .map_err(|e| (0, e.to_string()))?;
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
    let mut starts = Vec::with_capacity(parts.len());
    for (p, &off) in parts.iter().zip(&offsets) {
        if let std::collections::hash_map::Entry::Vacant(slot) = typed.entry(p.dtype) {
            // `total` is a multiple of 64, so every dtype view is whole.
            let t = buf
                .f_view_dtype(p.dtype.kind())
                .map_err(|e| (0, e.to_string()))?;
            slot.insert(t);
        }
        starts.push(off);
    }
    Ok(Packed { buf, typed, starts })
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
    ) -> Result<Tensor, String> {
        // Parts start 64-byte aligned and `buf` is a multiple of 64 bytes: every dtype divides.
        let start = (self.starts[part] / dtype.size()) as i64 + offset;
        match self.typed.get(&dtype) {
            Some(t) => t.f_as_strided(shape, stride, Some(start)),
            None => self
                .buf
                .f_view_dtype(dtype.kind())
                .and_then(|t| t.f_as_strided(shape, stride, Some(start))),
        }
        .map_err(|e| e.to_string())
    }
}

/// Builds the tensors: every storage copied once into one buffer, then strided views into it.
fn materialize(named: Named, storages: Storages) -> Result<Vec<(String, Tensor)>, String> {
    // Validate everything first.
    for (key, t) in &named {
        let s = &t.storage;
        let origin = || (storages.origin)(&s.key);
        let bytes = storages
            .data
            .get(&s.key)
            .ok_or_else(|| format!("storage {} is missing", origin()))?;
        let declared = s.numel.checked_mul(s.dtype.size() as u64);
        if declared != Some(bytes.len() as u64) && s.view.is_none() {
            return Err(format!(
                "{}: the pickle declares {} {} elements, the file holds {} bytes",
                origin(),
                s.numel,
                s.dtype.name(),
                bytes.len()
            ));
        }
        let (mut offset, mut avail_bytes) = (0u64, bytes.len() as u64);
        if let Some((voff, vsize)) = s.view {
            let esize = s.dtype.size() as u64;
            let end = voff.checked_add(vsize).and_then(|e| e.checked_mul(esize));
            if !matches!(end, Some(e) if e <= bytes.len() as u64) {
                return Err(format!("{}: storage view out of range", origin()));
            }
            offset = voff * esize;
            avail_bytes = vsize * esize;
        }
        if offset % t.dtype.size() as u64 != 0 {
            return Err(format!(
                "{key}: storage view not aligned to {}",
                t.dtype.name()
            ));
        }
        let avail = avail_bytes / t.dtype.size() as u64;
        check_view(t.offset, &t.shape, &t.stride, avail).map_err(|e| format!("{key}: {e}"))?;
    }
    // One part per storage, whatever dtypes its tensors read it as (in first-use order), so a
    // storage is copied once: the copies add up to no more than the file's bytes.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut used: Vec<(&str, Vec<DType>)> = Vec::new();
    for (_, t) in &named {
        let key = t.storage.key.as_str();
        let i = *index.entry(key).or_insert_with(|| {
            used.push((key, Vec::new()));
            used.len() - 1
        });
        if !used[i].1.contains(&t.dtype) {
            used[i].1.push(t.dtype);
        }
    }
    let mut parts = Vec::with_capacity(used.len());
    let mut total = 0usize;
    for (key, dtypes) in &used {
        let bytes = storages.data[*key];
        let origin = || (storages.origin)(key);
        let dtype = if let [only] = dtypes[..] {
            only
        } else {
            let other_size = dtypes.iter().find(|d| d.size() != dtypes[0].size());
            if let (true, Some(other)) = (storages.big_endian, other_size) {
                return Err(format!(
                    "{}: read as {} and {} in a big-endian file: a storage viewed as dtypes of \
                     different sizes cannot be byte-swapped",
                    origin(),
                    dtypes[0].name(),
                    other.name()
                ));
            }
            if dtypes.contains(&DType::Bool) {
                if let Some(b) = bytes.iter().find(|&&b| b > 1) {
                    return Err(format!(
                        "{}: invalid bool value {b} (must be 0 or 1)",
                        origin()
                    ));
                }
            }
            match storages.big_endian {
                // Swapped by element size: any of them (the sizes agree).
                true => *dtypes.iter().find(|&&d| d != DType::Bool).unwrap(),
                false => DType::U8,
            }
        };
        let usable = bytes.len() - bytes.len() % dtype.size();
        total = total.saturating_add(usable);
        parts.push(Part {
            bytes: &bytes[..usable],
            dtype,
        });
    }
    if total > storages.file_len {
        return Err(format!(
            "the storages add up to {total} bytes, more than the file's {} bytes: storages \
             that share bytes are refused",
            storages.file_len
        ));
    }
    let packed = pack(&parts, storages.big_endian)
        .map_err(|(i, e)| format!("{}: {e}", (storages.origin)(used[i].0)))?;
    let mut out = Vec::with_capacity(named.len());
    for (key, t) in &named {
        let s = &t.storage;
        let part = index[s.key.as_str()];
        let view_off = s
            .view
            .map(|(o, _)| o * s.dtype.size() as u64 / t.dtype.size() as u64);
        let offset = t.offset + view_off.unwrap_or(0) as i64;
        let v = packed
            .view(part, t.dtype, offset, &t.shape, &t.stride)
            .map_err(|e| format!("{key}: {e}"))?;
        out.push((key.clone(), v));
    }
    Ok(out)
}
