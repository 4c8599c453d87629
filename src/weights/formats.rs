//! Format detection by content, safetensors (read and write) and tch's `.ot` (write).

use super::fault::{Fault, Res, Within};
use super::pickle::DType;
use super::torch_file::{check_tensor_count, pack, Part, LEGACY_MAGIC, LEGACY_PREFIX};
use super::Format;
use crate::{Error, Result};
use std::io::Write;
use std::path::Path;
use tch::{Device, Tensor};

/// The format of a weight file from its first bytes (`None`: not a weight file we know).
/// Zip archives are reported as [`Format::TorchZip`]; [`read_bytes`](super::read_bytes) tells a
/// TorchScript archive (tch's `.ot`) apart by its entries.
pub fn detect(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Some(Format::TorchZip);
    }
    if bytes.len() >= 14 && bytes[..4] == LEGACY_PREFIX {
        let mut magic = [0u8; 16];
        magic[..10].copy_from_slice(&bytes[4..14]);
        if u128::from_le_bytes(magic) == LEGACY_MAGIC {
            return Some(Format::TorchLegacy);
        }
    }
    if bytes.len() >= 9 && bytes[8] == b'{' {
        return Some(Format::Safetensors);
    }
    None
}

/// The largest safetensors header we accept (the format's own reader allows 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor of a safetensors header: data range, name, dtype, shape.
type StEntry = (u64, u64, String, DType, Vec<i64>);

/// A JSON list of at most [`MAX_DIMS`](super::pickle::MAX_DIMS) + 1 integers (a shape or the
/// data offsets), `None` if any is not a non-negative integer: a longer list is refused while it
/// is parsed, so a header cannot make us hold more than a few integers per tensor.
struct Ints(Option<Vec<u64>>);

impl<'de> serde::Deserialize<'de> for Ints {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ints;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of integers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ints, A::Error> {
                let mut out = Some(Vec::new());
                let mut n = 0usize;
                while let Some(v) = seq.next_element::<serde_json::Number>()? {
                    n += 1;
                    if n > super::pickle::MAX_DIMS + 1 {
                        return Err(serde::de::Error::custom(format!(
                            "a list of more than {} integers",
                            super::pickle::MAX_DIMS
                        )));
                    }
                    match (&mut out, v.as_u64()) {
                        (Some(o), Some(v)) => o.push(v),
                        _ => out = None,
                    }
                }
                Ok(Ints(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A tensor's header entry as written (other fields are skipped without being stored).
#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: Option<String>,
    shape: Option<Ints>,
    data_offsets: Option<Ints>,
}

/// Checks one header entry; `data_len` is the length of the data after the header.
fn st_entry(name: String, v: RawEntry, data_len: u64) -> Res<StEntry> {
    let bad = |what: &str| Fault::malformed(format!("tensor {name:?}: {what}"));
    let dtype_name = v.dtype.as_deref().ok_or_else(|| bad("no dtype"))?;
    let dtype = DType::from_safetensors_name(dtype_name)
        .ok_or_else(|| bad(&format!("unknown dtype {dtype_name:?}")))?;
    let shape: Vec<i64> = v
        .shape
        .ok_or_else(|| bad("no shape"))?
        .0
        .filter(|s| s.iter().all(|&d| d <= i64::MAX as u64))
        .ok_or_else(|| bad("shape is not a list of non-negative integers"))?
        .into_iter()
        .map(|d| d as i64)
        .collect();
    if shape.len() > super::pickle::MAX_DIMS {
        return Err(bad("too many dimensions"));
    }
    let (begin, end) = match v.data_offsets.and_then(|o| o.0).as_deref() {
        Some(&[b, e]) => (b, e),
        _ => return Err(bad("data_offsets is not [begin, end]")),
    };
    if begin > end {
        return Err(bad(&format!(
            "bad data_offsets [{begin}, {end}]: the end is before the beginning"
        )));
    }
    if end > data_len {
        return Err(bad(&format!(
            "data_offsets [{begin}, {end}] run past the end of the file, whose data section \
             holds {data_len} bytes (truncated?)"
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let nbytes = numel.and_then(|n| n.checked_mul(dtype.size() as u64));
    if nbytes != Some(end - begin) {
        return Err(bad(&format!(
            "shape {shape:?} of {} does not match its {} bytes",
            dtype.name(),
            end - begin
        )));
    }
    Ok((begin, end, name, dtype, shape))
}

/// Parses a safetensors header into checked entries, each as it is read: `__metadata__` and
/// unknown fields are skipped without being stored, so memory stays proportional to the tensors
/// (not to whatever JSON the header holds).
fn parse_header(header: &str, data_len: u64) -> Res<Vec<StEntry>> {
    struct V(u64);
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Res<Vec<StEntry>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            let mut names = std::collections::HashSet::new();
            while let Some(name) = map.next_key::<String>()? {
                if name == "__metadata__" {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
                let raw: RawEntry = map
                    .next_value()
                    .map_err(|e| serde::de::Error::custom(format!("tensor {name:?}: {e}")))?;
                let entry = match names.insert(name.clone()) {
                    true => st_entry(name, raw, self.0),
                    false => Err(Fault::malformed(format!("tensor {name:?} appears twice"))),
                };
                match entry {
                    Ok(e) => entries.push(e),
                    Err(fault) => {
                        // The rest of the map is read (not stored), so that the JSON parser ends
                        // cleanly and the fault is the message.
                        while map
                            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                            .is_some()
                        {}
                        return Ok(Err(fault));
                    }
                }
            }
            Ok(Ok(entries))
        }
    }
    let mut de = serde_json::Deserializer::from_str(header);
    let entries = serde::Deserializer::deserialize_map(&mut de, V(data_len))
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| Fault::malformed(format!("header: {e}")))?;
    entries
}

/// Reads a safetensors file held in memory; tensors in the order of their data.
///
/// As the reference reader requires, the tensors' data must tile the data section exactly:
/// sorted by offset, each begins where the previous one ends, from 0 to the end of the file.
/// (Overlapping entries would each be copied: 3,000 entries on one 1 MiB range would turn a
/// 1.3 MB file into 3 GB.)
pub fn read_safetensors(bytes: &[u8]) -> Res<Vec<(String, Tensor)>> {
    let (header, data) = split_header(bytes)?;
    let mut entries = parse_header(header.trim_end(), data.len() as u64)?;
    check_tensor_count(entries.len(), bytes.len())?;
    entries.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    check_tiling(&entries, data.len() as u64)?;
    let parts: Vec<Part> = entries
        .iter()
        .map(|(begin, end, _, dtype, _)| Part {
            bytes: &data[*begin as usize..*end as usize],
            dtype: *dtype,
        })
        .collect();
    let entry = |name: &str| format!("tensor {name:?}");
    let packed = pack(&parts, false).map_err(|(i, e)| e.within(entry(&entries[i].2)))?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, (_, _, name, dtype, shape)) in entries.into_iter().enumerate() {
        let t = packed
            .view(i, dtype, 0, &shape, &contiguous_strides(&shape))
            .within(|| entry(&name))?;
        out.push((name, t));
    }
    Ok(out)
}

/// The header (UTF-8 JSON) and the data after it.
fn split_header(bytes: &[u8]) -> Res<(&str, &[u8])> {
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(|| Fault::malformed("file shorter than 8 bytes"))?
            .try_into()
            .unwrap(),
    );
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(Fault::malformed(format!(
            "header of {n} bytes runs past the end of the file ({} bytes): truncated or not \
             safetensors",
            bytes.len()
        )));
    }
    let header = std::str::from_utf8(&bytes[8..8 + n as usize])
        .map_err(|_| Fault::malformed("header is not UTF-8"))?;
    Ok((header, &bytes[8 + n as usize..]))
}

/// Checks that `entries`, sorted by offset, tile the `data_len` bytes of data exactly.
fn check_tiling(entries: &[StEntry], data_len: u64) -> Res<()> {
    let mut at = 0u64;
    for (begin, end, name, _, _) in entries {
        if *begin != at {
            let (fault, how): (fn(String) -> Fault, _) = if *begin < at {
                let how = format!("overlap the previous tensor's data, which ends at {at}");
                (Fault::over_limit, how)
            } else {
                let how =
                    format!("leave a gap after the previous tensor's data, which ends at {at}");
                (Fault::malformed, how)
            };
            return Err(fault(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] {how} (the data of \
                 the tensors must follow one another without gaps or overlaps)"
            )));
        }
        at = *end;
    }
    if at != data_len {
        return Err(Fault::malformed(format!(
            "the tensors' data ends at byte {at} of the {data_len} bytes of data \
             (trailing bytes: corrupt or not written by safetensors)"
        )));
    }
    Ok(())
}

/// Row-major strides of a contiguous tensor of `shape`.
fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut stride = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        stride[d] = stride[d + 1].saturating_mul(shape[d + 1].max(1));
    }
    stride
}

/// A contiguous CPU copy of `t` if needed, and its dtype (`path`: the file being written).
pub(super) fn contiguous_cpu(path: &Path, name: &str, t: &Tensor) -> Result<(Tensor, DType)> {
    let fail = |msg: String| Error::Unwritable {
        path: path.to_path_buf(),
        msg: format!("{name}: {msg}"),
    };
    let dtype = DType::from_kind(t.kind())
        .ok_or_else(|| fail(format!("dtype {:?} cannot be written", t.kind())))?;
    let t = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(|e| fail(e.to_string()))?;
    Ok((t, dtype))
}

/// The `nbytes` bytes of a contiguous CPU tensor from [`contiguous_cpu`] (`nbytes`: its element
/// count times its dtype's size).
pub(super) fn bytes_of(t: &Tensor, nbytes: usize) -> &[u8] {
    if nbytes == 0 {
        return &[];
    }
    // SAFETY: `t` is a contiguous CPU tensor of `nbytes` bytes, borrowed for the slice's life.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, nbytes) }
}

/// Writes tensors as safetensors to `out`, in the given order, with `{"format": "pt"}`
/// metadata (`path`: the file `out` writes, for errors).
pub fn write_safetensors<W: Write>(
    path: &Path,
    out: &mut W,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut prepared = Vec::with_capacity(tensors.len());
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for (name, t) in tensors {
        if name == "__metadata__" || !seen.insert(name.as_str()) {
            return Err(Error::Unwritable {
                path: path.to_path_buf(),
                msg: format!("duplicate or reserved tensor name {name:?}"),
            });
        }
        let (t, dtype) = contiguous_cpu(path, name, t)?;
        let nbytes = t.numel() as u64 * dtype.size() as u64;
        // (Strings and integer lists always serialize.)
        header.push_str(&format!(
            r#",{}:{{"dtype":"{}","shape":{},"data_offsets":[{},{}]}}"#,
            serde_json::Value::from(name.as_str()),
            dtype.safetensors_name(),
            serde_json::Value::from(t.size()),
            offset,
            offset + nbytes
        ));
        offset += nbytes;
        prepared.push((t, nbytes as usize));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let io = |e: std::io::Error| Error::io(path, e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(header.as_bytes()).map_err(io)?;
    for (t, nbytes) in prepared {
        out.write_all(bytes_of(&t, nbytes)).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Writes tensors in tch's `.ot` format (a TorchScript archive, `Tensor::save_multi`).
pub fn write_ot(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let fail = |msg: String| Error::Unwritable {
        path: path.to_path_buf(),
        msg,
    };
    let mut prepared = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if name.contains('|') {
            return Err(fail(format!("{name:?}: `|` cannot be stored in .ot names")));
        }
        // An own copy each: tensors from `read` are views into one shared buffer, and the
        // TorchScript writer would store that whole buffer under every dtype.
        prepared.push((name.as_str(), contiguous_cpu(path, name, t)?.0.copy()));
    }
    Tensor::save_multi(&prepared, path).map_err(|e| fail(e.to_string()))
}
