//! A minimal, zero-copy zip reader for torch archives.
//!
//! torch (`PyTorchStreamWriter`) and TorchScript write *stored* (uncompressed) entries, so an
//! entry's data is a slice of the file's bytes: no decompression, no copy. Every offset and size
//! from the file is checked against its length before use, entry data is verified against the
//! CRC-32 recorded in the central directory, and ZIP64 records (archives over 4 GiB) are read.
//!
//! Entries may not share bytes: an archive whose central directory points several entries at
//! one local header or at overlapping data (a zip bomb's trick: a 1.5 MB file could otherwise
//! hand out thousands of 1 MiB storages) is refused when parsed, as Python's `zipfile` does.

use super::fault::{Fault, Res};
use std::collections::HashMap;

/// One entry of the central directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    method: u16,
    crc32: u32,
    compressed_size: u64,
    size: u64,
    header_offset: u64,
}

/// The entries of a zip archive held in memory.
#[derive(Debug)]
pub struct Zip<'a> {
    data: &'a [u8],
    pub entries: Vec<Entry>,
    /// Entry index by name (the first entry of a name).
    by_name: HashMap<&'a str, usize>,
}

pub const EOCD_SIG: u32 = 0x0605_4b50;
pub const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
pub const EOCD64_SIG: u32 = 0x0606_4b50;
pub const CENTRAL_SIG: u32 = 0x0201_4b50;
pub const LOCAL_SIG: u32 = 0x0403_4b50;

fn slice(data: &[u8], at: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(at).ok()?;
    let len = usize::try_from(len).ok()?;
    data.get(start..start.checked_add(len)?)
}

/// Refuses entries whose local header and data overlap another's (sorted by header offset, each
/// must end before the next begins). Entries whose local header cannot be read are left to
/// [`Zip::read`], which refuses them.
fn check_overlaps(data: &[u8], entries: &[Entry]) -> Res<()> {
    let mut spans: Vec<(u64, u64, usize)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let local = slice(data, e.header_offset, 30)?;
            if u32_at(local, 0) != LOCAL_SIG {
                return None;
            }
            let len = (30 + u16_at(local, 26) as u64 + u16_at(local, 28) as u64)
                .saturating_add(e.compressed_size);
            Some((e.header_offset, e.header_offset.saturating_add(len), i))
        })
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        let ((a_start, a_end, a), (b_start, b_end, b)) = (w[0], w[1]);
        if b_start < a_end {
            return Err(Fault::over_limit(format!(
                "zip entries {:?} (bytes {a_start}..{a_end}) and {:?} (bytes {b_start}..{b_end}) \
                 overlap: an archive whose entries share data is refused",
                entries[a].name, entries[b].name
            )));
        }
    }
    Ok(())
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}
fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}
fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

/// Where the central directory is: (entry count, size, offset), from the end-of-central-directory
/// record (and its ZIP64 record for archives over 4 GiB).
fn central_directory_span(data: &[u8]) -> Res<(u64, u64, u64)> {
    // End of central directory: 22 bytes plus a comment of up to 65535 bytes.
    if data.len() < 22 {
        return Err(Fault::malformed("zip archive too short (truncated?)"));
    }
    let lowest = data.len().saturating_sub(22 + 65535);
    let eocd = (lowest..=data.len() - 22)
        .rev()
        .find(|&i| u32_at(data, i) == EOCD_SIG)
        .ok_or_else(|| {
            Fault::malformed("zip end-of-central-directory record not found (truncated zip?)")
        })?;
    let count = u16_at(data, eocd + 10) as u64;
    let cd_size = u32_at(data, eocd + 12) as u64;
    let cd_offset = u32_at(data, eocd + 16) as u64;
    if count != 0xFFFF && cd_size != 0xFFFF_FFFF && cd_offset != 0xFFFF_FFFF {
        return Ok((count, cd_size, cd_offset));
    }
    // ZIP64: a locator just before the EOCD points at the ZIP64 EOCD record.
    let loc = eocd
        .checked_sub(20)
        .ok_or_else(|| Fault::malformed("zip64 locator missing"))?;
    if u32_at(data, loc) != EOCD64_LOCATOR_SIG {
        return Err(Fault::malformed(
            "zip64 end-of-central-directory locator missing",
        ));
    }
    let rec_at = u64_at(data, loc + 8);
    let rec =
        slice(data, rec_at, 56).ok_or_else(|| Fault::malformed("zip64 record out of range"))?;
    if u32_at(rec, 0) != EOCD64_SIG {
        return Err(Fault::malformed(
            "zip64 end-of-central-directory record missing",
        ));
    }
    Ok((u64_at(rec, 32), u64_at(rec, 40), u64_at(rec, 48)))
}

/// Central directory entry `i`, at byte `at` of the directory `cd`: the entry, its name as
/// stored, and where the next entry begins.
fn central_entry(cd: &[u8], at: usize, i: u64) -> Res<(Entry, &str, usize)> {
    let truncated = || Fault::malformed("zip central directory truncated");
    let hdr = cd.get(at..at + 46).ok_or_else(truncated)?;
    if u32_at(hdr, 0) != CENTRAL_SIG {
        return Err(Fault::malformed(format!(
            "zip central directory entry {i} has a bad signature"
        )));
    }
    let name_len = u16_at(hdr, 28) as usize;
    let extra_len = u16_at(hdr, 30) as usize;
    let comment_len = u16_at(hdr, 32) as usize;
    let next = at + 46 + name_len + extra_len + comment_len;
    let var = cd.get(at + 46..next).ok_or_else(truncated)?;
    let name = std::str::from_utf8(&var[..name_len])
        .map_err(|_| Fault::malformed(format!("zip entry {i} has a name that is not UTF-8")))?;
    let mut entry = Entry {
        name: name.to_string(),
        method: u16_at(hdr, 10),
        crc32: u32_at(hdr, 16),
        compressed_size: u32_at(hdr, 20) as u64,
        size: u32_at(hdr, 24) as u64,
        header_offset: u32_at(hdr, 42) as u64,
    };
    read_zip64_extra(&mut entry, &var[name_len..name_len + extra_len]);
    Ok((entry, name, next))
}

/// ZIP64 extended information: the 0xFFFFFFFF fields of `e`, in this order.
fn read_zip64_extra(e: &mut Entry, mut extra: &[u8]) {
    while extra.len() >= 4 {
        let id = u16_at(extra, 0);
        let len = (u16_at(extra, 2) as usize).min(extra.len() - 4);
        let mut body = &extra[4..4 + len];
        if id == 0x0001 {
            for field in [&mut e.size, &mut e.compressed_size, &mut e.header_offset] {
                if *field == 0xFFFF_FFFF && body.len() >= 8 {
                    *field = u64_at(body, 0);
                    body = &body[8..];
                }
            }
        }
        extra = &extra[4 + len..];
    }
}

impl<'a> Zip<'a> {
    /// Parses the central directory.
    pub fn parse(data: &'a [u8]) -> Res<Zip<'a>> {
        let (count, cd_size, cd_offset) = central_directory_span(data)?;
        let cd = slice(data, cd_offset, cd_size).ok_or_else(|| {
            Fault::malformed(format!("zip central directory (offset {cd_offset}, {cd_size} bytes) lies outside the file (truncated?)"))
        })?;
        if count > (cd.len() / 46) as u64 {
            return Err(Fault::malformed(format!(
                "zip central directory too small for {count} entries"
            )));
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut by_name = HashMap::with_capacity(count as usize);
        let mut at = 0usize;
        for i in 0..count {
            let (entry, name, next) = central_entry(cd, at, i)?;
            by_name.entry(name).or_insert(entries.len());
            entries.push(entry);
            at = next;
        }
        check_overlaps(data, &entries)?;
        Ok(Zip {
            data,
            entries,
            by_name,
        })
    }

    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The bytes of a stored entry, CRC-checked; no copy.
    pub fn read(&self, e: &Entry) -> Res<&'a [u8]> {
        let name = &e.name;
        if e.method != 0 {
            return Err(Fault::malformed(format!(
                "zip entry {name} is compressed (method {}); torch writes stored entries, \
                 re-save the file with torch.save",
                e.method
            )));
        }
        if e.compressed_size != e.size {
            return Err(Fault::malformed(format!(
                "zip entry {name}: stored size {} != size {}",
                e.compressed_size, e.size
            )));
        }
        let local = slice(self.data, e.header_offset, 30).ok_or_else(|| {
            Fault::malformed(format!(
                "zip entry {name}: local header outside the file (truncated?)"
            ))
        })?;
        if u32_at(local, 0) != LOCAL_SIG {
            return Err(Fault::malformed(format!(
                "zip entry {name}: bad local header signature"
            )));
        }
        let skip = 30 + u16_at(local, 26) as u64 + u16_at(local, 28) as u64;
        let bytes = slice(self.data, e.header_offset + skip, e.size).ok_or_else(|| {
            Fault::malformed(format!(
                "zip entry {name}: {} bytes of data lie outside the file (truncated?)",
                e.size
            ))
        })?;
        let crc = crc32fast::hash(bytes);
        if crc != e.crc32 {
            return Err(Fault::malformed(format!(
                "zip entry {name}: CRC-32 mismatch (file corrupt: {crc:08x}, recorded {:08x})",
                e.crc32
            )));
        }
        Ok(bytes)
    }
}
