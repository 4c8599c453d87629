//! Format detection by content, safetensors (read and write) and tch's `.ot` (write).

use super::pickle::DType;
use super::torch_file::{pack, Part, LEGACY_MAGIC, LEGACY_PREFIX};
use super::Format;
use std::io::Write;
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

/// Reads a safetensors file held in memory; tensors in the order of their data.
pub fn read_safetensors(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or("safetensors file shorter than 8 bytes")?
            .try_into()
            .unwrap(),
    );
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(format!(
            "safetensors header of {n} bytes runs past the end of the file ({} bytes): truncated or not safetensors",
            bytes.len()
        ));
    }
    let header = std::str::from_utf8(&bytes[8..8 + n as usize])
        .map_err(|_| "safetensors header is not UTF-8".to_string())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(header.trim_end()).map_err(|e| format!("safetensors header: {e}"))?;
    let data = &bytes[8 + n as usize..];
    let mut entries = Vec::with_capacity(header.len());
    for (name, v) in &header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| format!("safetensors entry {name:?}: {what}");
        let dtype_name = v
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype"))?;
        let dtype = DType::from_safetensors_name(dtype_name)
            .ok_or_else(|| bad(&format!("unsupported dtype {dtype_name}")))?;
        let shape: Vec<i64> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .filter(|&d| d <= i64::MAX as u64)
                    .map(|d| d as i64)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of non-negative integers"))?;
        if shape.len() > super::pickle::MAX_DIMS {
            return Err(bad("too many dimensions"));
        }
        let offs = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
        let (begin, end) = offs;
        if begin > end || end > data.len() as u64 {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] outside the {} bytes of data (truncated?)",
                data.len()
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
        entries.push((begin, end, name.clone(), dtype, shape));
    }
    entries.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    let parts: Vec<Part> = entries
        .iter()
        .map(|(begin, end, _, dtype, _)| Part {
            bytes: &data[*begin as usize..*end as usize],
            dtype: *dtype,
        })
        .collect();
    let packed = pack(&parts, false)
        .map_err(|(i, e)| format!("safetensors entry {:?}: {e}", entries[i].2))?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, (_, _, name, dtype, shape)) in entries.into_iter().enumerate() {
        let mut stride = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1].saturating_mul(shape[d + 1].max(1));
        }
        let t = packed
            .view(i, dtype, 0, &shape, &stride)
            .map_err(|e| format!("safetensors entry {name:?}: {e}"))?;
        out.push((name, t));
    }
    Ok(out)
}

/// A contiguous CPU copy of `t` if needed, and its dtype.
fn contiguous_cpu(name: &str, t: &Tensor) -> Result<(Tensor, DType), String> {
    let dtype = DType::from_kind(t.kind())
        .ok_or_else(|| format!("{name}: dtype {:?} cannot be written", t.kind()))?;
    let t = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(|e| format!("{name}: {e}"))?;
    Ok((t, dtype))
}

/// Writes tensors as safetensors, in the given order, with `{"format": "pt"}` metadata.
pub fn write_safetensors<W: Write>(
    out: &mut W,
    tensors: &[(String, Tensor)],
) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    let mut prepared = Vec::with_capacity(tensors.len());
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for (name, t) in tensors {
        if name == "__metadata__" || !seen.insert(name.as_str()) {
            return Err(format!("duplicate or reserved tensor name {name:?}"));
        }
        let (t, dtype) = contiguous_cpu(name, t)?;
        let nbytes = t.numel() as u64 * dtype.size() as u64;
        let shape = t.size();
        header.push_str(&format!(
            r#",{}:{{"dtype":"{}","shape":{},"data_offsets":[{},{}]}}"#,
            serde_json::to_string(name).map_err(|e| e.to_string())?,
            dtype.safetensors_name(),
            serde_json::to_string(&shape).map_err(|e| e.to_string())?,
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
    let io = |e: std::io::Error| e.to_string();
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(header.as_bytes()).map_err(io)?;
    for (t, nbytes) in prepared {
        if nbytes == 0 {
            continue;
        }
        // SAFETY: `t` is a contiguous CPU tensor of `nbytes` bytes that lives through the write.
        let bytes = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, nbytes) };
        out.write_all(bytes).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Writes tensors in tch's `.ot` format (a TorchScript archive, `Tensor::save_multi`).
pub fn write_ot(path: &std::path::Path, tensors: &[(String, Tensor)]) -> Result<(), String> {
    let mut prepared = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if name.contains('|') {
            return Err(format!("{name:?}: `|` cannot be stored in .ot names"));
        }
        // An own copy each: tensors from `read` are views into one shared buffer, and the
        // TorchScript writer would store that whole buffer under every dtype.
        prepared.push((name.as_str(), contiguous_cpu(name, t)?.0.copy()));
    }
    Tensor::save_multi(&prepared, path).map_err(|e| e.to_string())
}
