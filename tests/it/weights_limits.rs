//! Hostile weight files that try to exhaust memory: a few kilobytes or megabytes of file that
//! would expand to gigabytes if every reference were copied (memoized pickle values expanded over
//! and over, safetensors entries and zip entries that share one data range, one legacy storage
//! read as every dtype). Each must be refused (or read) quickly, with an error naming the file
//! and the problem, and with the process's peak memory staying within a small multiple of the
//! file's size.
//!
//! The files are built here, in memory. Each test runs alone in a child process (this test
//! binary, filtered to it), so that the peak resident memory it measures (`VmHWM`, reset
//! through `/proc/self/clear_refs`) is its own and not that of the tests running beside it in
//! the one integration-test crate.

use mobilenet::{weights, Error};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Set in the child process that runs one test alone.
const CHILD: &str = "MOBILENET_WEIGHTS_LIMITS_CHILD";

/// In the parent: runs the test `name` alone in a child process and checks that it passed
/// (`None`: the parent has nothing more to do). In the child: a guard under which the test
/// measures its own memory.
fn isolated(name: &str) -> Option<MutexGuard<'static, ()>> {
    if std::env::var_os(CHILD).is_some() {
        return Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let test = format!("weights_limits::{name}");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([&test, "--exact", "--test-threads", "1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a child process:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    None
}

/// A field of /proc/self/status in bytes (Linux).
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reads `bytes` as `name` and returns the result; asserts it took under 10 s (no runaway work;
/// a hang guard, not a benchmark: the bytes are refused in milliseconds) and that
/// the process's resident memory grew by at most `2 * bytes.len() + 64 MiB` meanwhile (when the
/// peak can be reset: Linux).
fn read_bounded(name: &str, bytes: &[u8]) -> Result<weights::StateDict, Error> {
    let measured = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_bytes("VmRSS:");
    let t0 = Instant::now();
    let r = weights::read_bytes(bytes, Path::new(name));
    let took = t0.elapsed();
    let peak = status_bytes("VmHWM:");
    let what = match &r {
        Ok(sd) => format!("{} tensors", sd.tensors.len()),
        Err(e) => e.to_string(),
    };
    assert!(
        took < Duration::from_secs(10),
        "{name}: took {took:?} ({} bytes of file): {what}",
        bytes.len()
    );
    if let (true, Some(before), Some(peak)) = (measured, before, peak) {
        let allowed = 2 * bytes.len() as u64 + (64 << 20);
        let grew = peak.saturating_sub(before);
        assert!(
            grew <= allowed,
            "{name}: peak memory grew by {} MiB for a file of {} KiB (allowed {} MiB): {what}",
            grew >> 20,
            bytes.len() >> 10,
            allowed >> 20
        );
    }
    r
}

/// Asserts that reading fails within the bounds, with an error naming the file and holding
/// every word of `words`.
fn refused(name: &str, bytes: &[u8], words: &[&str]) -> Error {
    let err = match read_bounded(name, bytes) {
        Ok(sd) => panic!(
            "{name}: read {} tensors, expected an error",
            sd.tensors.len()
        ),
        Err(e) => e,
    };
    let e = err.to_string();
    assert!(e.starts_with(&format!("{name}: ")), "{name}: {e}");
    for w in words {
        assert!(e.contains(w), "{name}: error lacks {w:?}: {e}");
    }
    err
}

/// [`refused`] as [`Error::OverLimit`]: more memory than the file's size allows.
fn over_limit(name: &str, bytes: &[u8], words: &[&str]) -> Error {
    let err = refused(name, bytes, words);
    assert!(matches!(err, Error::OverLimit { .. }), "{name}: {err:?}");
    err
}

// ---------------------------------------------------------------------------------------------
// builders

/// A protocol-2 pickle, written opcode by opcode.
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Pk {
        Pk(vec![0x80, 0x02])
    }
    fn raw(&mut self, b: &[u8]) -> &mut Pk {
        self.0.extend_from_slice(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Pk {
        self.raw(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Pk {
        self.raw(b"X")
            .raw(&(s.len() as u32).to_le_bytes())
            .raw(s.as_bytes())
    }
    fn int(&mut self, v: i32) -> &mut Pk {
        self.raw(b"J").raw(&v.to_le_bytes())
    }
    /// BINPUT / BINGET (memo slots below 256).
    fn put(&mut self, i: u8) -> &mut Pk {
        self.raw(&[b'q', i])
    }
    fn get(&mut self, i: u8) -> &mut Pk {
        self.raw(&[b'h', i])
    }
    /// `_rebuild_tensor_v2(storage, 0, (numel,), (1,), False, OrderedDict())` on the storage
    /// `('storage', torch.<class>, key, 'cpu', numel[, (key, view_offset, numel)])`.
    fn tensor(&mut self, class: &str, key: &str, numel: i32, view: Option<i32>) -> &mut Pk {
        self.global("torch._utils", "_rebuild_tensor_v2").raw(b"((");
        self.str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel);
        if let Some(off) = view {
            self.raw(b"(").str(key).int(off).int(numel).raw(b"t");
        }
        self.raw(b"tQ") // the persistent id, loaded
            .raw(b"K\x00")
            .int(numel)
            .raw(b"\x85K\x01\x85\x89")
            .global("collections", "OrderedDict")
            .raw(b")Rt")
            .raw(b"R")
    }
    fn stop(&mut self) -> Vec<u8> {
        self.raw(b".");
        std::mem::take(&mut self.0)
    }
}

/// Where a zip entry's local header is, its CRC-32 and size.
type At = (u32, u32, u32);

/// Appends a stored entry's local header and data.
fn local(out: &mut Vec<u8>, name: &str, data: &[u8]) -> At {
    let at = (out.len() as u32, crc32fast::hash(data), data.len() as u32);
    out.extend(0x0403_4b50u32.to_le_bytes());
    out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
    out.extend(at.1.to_le_bytes());
    out.extend(at.2.to_le_bytes());
    out.extend(at.2.to_le_bytes());
    out.extend((name.len() as u16).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(name.as_bytes());
    out.extend(data);
    at
}

/// Appends the central directory (entries pointing wherever `central` says) and its end record.
fn finish(mut out: Vec<u8>, central: &[(String, At)]) -> Vec<u8> {
    let cd_offset = out.len() as u32;
    for (name, (offset, crc, size)) in central {
        out.extend(0x0201_4b50u32.to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(crc.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend([0u8; 8]); // extra len, comment len, disk, internal attr
        out.extend(0u32.to_le_bytes()); // external attr
        out.extend(offset.to_le_bytes());
        out.extend(name.as_bytes());
    }
    let cd_size = out.len() as u32 - cd_offset;
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((central.len() as u16).to_le_bytes());
    out.extend((central.len() as u16).to_le_bytes());
    out.extend(cd_size.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// A zip of stored entries.
pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let central: Vec<(String, At)> = entries
        .iter()
        .map(|(n, d)| (n.to_string(), local(&mut out, n, d)))
        .collect();
    finish(out, &central)
}

/// A torch zip archive holding `pkl` as its `data.pkl` (plus `extra` entries).
fn torch_zip(pkl: &[u8], extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", pkl)];
    entries.extend_from_slice(extra);
    zip_of(&entries)
}

pub(crate) fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

// ---------------------------------------------------------------------------------------------
// restricted unpickler: quadratic growth through the memo

/// The review's case: one memoized tuple of `n` pairs, `OrderedDict(pairs)` built `m` times.
/// 52 KB of pickle; it used to build 20 million dict entries (1 GB).
#[test]
fn ordered_dict_of_a_memoized_tuple_rebuilt_over_and_over() {
    let Some(_serial) = isolated("ordered_dict_of_a_memoized_tuple_rebuilt_over_and_over") else {
        return;
    };
    let (n, m) = (5_000, 4_000);
    let mut p = Pk::new();
    p.global("collections", "OrderedDict").put(1).raw(b"(");
    for _ in 0..n {
        p.raw(b"K\x01K\x02\x86");
    }
    p.raw(b"t").put(0).raw(b"0");
    for _ in 0..m {
        p.get(1).get(0).raw(b"\x85R0");
    }
    let pkl = p.raw(b"}").stop();
    assert!(pkl.len() < 60_000);
    let e = over_limit(
        "od.pth",
        &torch_zip(&pkl, &[]),
        &["data.pkl", "copies more than", "memoized"],
    );
    assert!(
        matches!(
            e,
            Error::OverLimit {
                offset: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
}

/// The same through `torch.Size(t)` (10,000 times a tuple of 10,000: 800 MB).
#[test]
fn torch_size_of_a_memoized_tuple() {
    let Some(_serial) = isolated("torch_size_of_a_memoized_tuple") else {
        return;
    };
    let mut p = Pk::new();
    p.global("torch", "Size").put(1).raw(b"0(");
    p.raw(&b"K\x01".repeat(10_000)).raw(b"t").put(0).raw(b"0");
    for _ in 0..10_000 {
        p.get(1).get(0).raw(b"\x85R0");
    }
    let pkl = p.raw(b"}").stop();
    over_limit("size.pth", &torch_zip(&pkl, &[]), &["copies more than"]);
}

/// And through call arguments (`torch.device(*t)`: 50,000 times a tuple of 50,000, 20 GB of
/// copying, if not of memory).
#[test]
fn arguments_from_a_memoized_tuple() {
    let Some(_serial) = isolated("arguments_from_a_memoized_tuple") else {
        return;
    };
    let mut p = Pk::new();
    p.global("torch", "device").put(1).raw(b"0(");
    p.raw(&b"K\x01".repeat(50_000)).raw(b"t").put(0).raw(b"0");
    for _ in 0..50_000 {
        p.get(1).get(0).raw(b"R0");
    }
    let pkl = p.raw(b"}").stop();
    over_limit("args.pth", &torch_zip(&pkl, &[]), &["copies more than"]);
}

/// `_codecs.encode(text, 'latin1')` of one memoized 20 KB string, 20,000 times (400 MB).
#[test]
fn codecs_encode_of_a_memoized_string() {
    let Some(_serial) = isolated("codecs_encode_of_a_memoized_string") else {
        return;
    };
    let mut p = Pk::new();
    p.global("_codecs", "encode").put(1).raw(b"0");
    p.str(&"a".repeat(20_000)).put(0).raw(b"0");
    p.str("latin1").put(2).raw(b"0");
    for _ in 0..20_000 {
        p.get(1).get(0).get(2).raw(b"\x86R0");
    }
    let pkl = p.raw(b"}").stop();
    over_limit("codecs.pth", &torch_zip(&pkl, &[]), &["copies more than"]);
}

/// A storage key is copied into every storage loaded from it: keys are short, and long ones
/// refused.
#[test]
fn long_storage_key() {
    let Some(_serial) = isolated("long_storage_key") else {
        return;
    };
    let key = "k".repeat(5_000);
    let mut p = Pk::new();
    p.raw(b"}(").str("w").tensor("FloatStorage", &key, 1, None);
    let pkl = p.raw(b"u").stop();
    let data = [0u8; 4];
    let name = format!("archive/data/{key}");
    let zip = torch_zip(&pkl, &[(name.as_str(), &data)]);
    let err = refused("key.pth", &zip, &["storage key of 5000 bytes"]);
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
}

/// A TorchScript archive whose 2,000 submodules share one attribute dict of 1,000 tensors:
/// 2 million tensors from 45 KB.
#[test]
fn torchscript_objects_sharing_one_state() {
    let Some(_serial) = isolated("torchscript_objects_sharing_one_state") else {
        return;
    };
    let (n, m) = (1_000, 2_000);
    let mut p = Pk::new();
    p.global("__torch__", "Child").put(1).raw(b"0");
    p.tensor("FloatStorage", "0", 1, None).put(2).raw(b"0");
    p.raw(b"}(");
    for i in 0..n {
        p.str(&format!("w{i}")).get(2);
    }
    p.raw(b"u").put(3).raw(b"0");
    p.global("__torch__", "Root").raw(b")\x81}(");
    for j in 0..m {
        p.str(&format!("m{j}"))
            .get(1)
            .raw(b")\x81")
            .get(3)
            .raw(b"b");
    }
    let pkl = p.raw(b"ub").stop();
    let data = [0u8; 4];
    let zip = torch_zip(
        &pkl,
        &[
            ("archive/constants.pkl", &b"\x80\x02)."[..]),
            ("archive/data/0", &data[..]),
        ],
    );
    over_limit("shared.ot", &zip, &["TorchScript", "refused"]);
}

// ---------------------------------------------------------------------------------------------
// safetensors: entries must tile the data exactly

const MIB: usize = 1 << 20;

fn st_entry(name: &str, dtype: &str, shape: &[usize], begin: usize, end: usize) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{begin},{end}]}}"#)
}

/// The review's case: 1,000 entries all on bytes [0, 1 MiB) of a 1 MiB file (1 GB once copied).
#[test]
fn safetensors_entries_sharing_one_range() {
    let Some(_serial) = isolated("safetensors_entries_sharing_one_range") else {
        return;
    };
    let entries: Vec<String> = (0..1_000)
        .map(|i| st_entry(&format!("t{i:04}"), "F32", &[MIB / 4], 0, MIB))
        .collect();
    let file = safetensors(&format!("{{{}}}", entries.join(",")), &vec![0u8; MIB]);
    over_limit("overlap.safetensors", &file, &["\"t0001\"", "overlap"]);
}

#[test]
fn safetensors_gaps_overlaps_and_trailing_bytes() {
    let Some(_serial) = isolated("safetensors_gaps_overlaps_and_trailing_bytes") else {
        return;
    };
    let data = vec![0u8; 16];
    let cases = [
        // [0, 8) and [4, 12): overlap
        (
            format!(
                "{{{},{}}}",
                st_entry("a", "F32", &[2], 0, 8),
                st_entry("b", "F32", &[2], 4, 12)
            ),
            "overlap",
        ),
        // [0, 4) then [8, 16): a gap
        (
            format!(
                "{{{},{}}}",
                st_entry("a", "F32", &[1], 0, 4),
                st_entry("b", "F32", &[2], 8, 16)
            ),
            "gap",
        ),
        // first begin not 0
        (format!("{{{}}}", st_entry("a", "F32", &[2], 8, 16)), "gap"),
        // one name twice (a JSON object keeps only one: the other's bytes would be a gap)
        (
            format!(
                "{{{},{}}}",
                st_entry("a", "F32", &[2], 0, 8),
                st_entry("a", "F32", &[2], 8, 16)
            ),
            "twice",
        ),
        // [0, 8) of 16 bytes: trailing bytes
        (
            format!("{{{}}}", st_entry("a", "F32", &[2], 0, 8)),
            "trailing",
        ),
    ];
    for (i, (header, word)) in cases.iter().enumerate() {
        let name = format!("case{i}.safetensors");
        let err = refused(&name, &safetensors(header, &data), &[word]);
        // Overlapping data would be copied twice; the rest is a malformed file.
        match *word {
            "overlap" => assert!(matches!(err, Error::OverLimit { .. }), "{err:?}"),
            _ => assert!(matches!(err, Error::Malformed { .. }), "{err:?}"),
        }
    }
}

/// What the reference reader accepts still reads: zero-size tensors anywhere (several at one
/// offset), `__metadata__`, entries in any order in the header.
#[test]
fn safetensors_valid_tilings_still_read() {
    let Some(_serial) = isolated("safetensors_valid_tilings_still_read") else {
        return;
    };
    let data: Vec<u8> = (0..16u8).collect();
    let header = format!(
        r#"{{"__metadata__":{{"format":"pt"}},{},{},{},{},{}}}"#,
        st_entry("z_end", "F32", &[0], 16, 16),
        st_entry("b", "U8", &[2, 6], 4, 16),
        st_entry("a", "F32", &[1], 0, 4),
        st_entry("z_mid", "F16", &[3, 0], 4, 4),
        st_entry("z_start", "I64", &[0], 0, 0),
    );
    let sd = read_bounded("ok.safetensors", &safetensors(&header, &data)).unwrap();
    let keys: Vec<&str> = sd.tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["z_start", "a", "z_mid", "b", "z_end"]);
    let b = sd.get("b").unwrap();
    assert_eq!(b.size(), [2, 6]);
    assert_eq!(b.int64_value(&[1, 5]), 15);
}

/// A header is parsed without holding what it does not need: 24 MB of `__metadata__` made of
/// small JSON values (a few hundred MB as a JSON tree) costs nothing; a shape of millions of
/// dimensions is refused while it is parsed.
#[test]
fn safetensors_header_parsed_in_bounded_memory() {
    let Some(_serial) = isolated("safetensors_header_parsed_in_bounded_memory") else {
        return;
    };
    let n = 12_000_000;
    let mut meta = String::with_capacity(2 * n + 64);
    meta.push_str(r#"{"__metadata__":{"junk":["#);
    for _ in 0..n - 1 {
        meta.push_str("0,");
    }
    meta.push_str("0]},");
    meta.push_str(&st_entry("a", "F32", &[1], 0, 4));
    meta.push('}');
    let sd = read_bounded("meta.safetensors", &safetensors(&meta, &[0u8; 4])).unwrap();
    assert_eq!(sd.tensors.len(), 1);

    let mut dims = String::with_capacity(2 * n + 64);
    dims.push_str(r#"{"a":{"dtype":"U8","data_offsets":[0,1],"shape":["#);
    for _ in 0..n - 1 {
        dims.push_str("1,");
    }
    dims.push_str("1]}}");
    let err = refused(
        "dims.safetensors",
        &safetensors(&dims, &[0u8; 1]),
        &["\"a\"", "more than 64"],
    );
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// zip: entries may not share data

/// The review's case: 1,000 storages whose central-directory entries all point at one 1 MiB
/// stored entry (1 GB once copied).
#[test]
fn zip_entries_sharing_one_local_entry() {
    let Some(_serial) = isolated("zip_entries_sharing_one_local_entry") else {
        return;
    };
    let n = 1_000;
    let mut p = Pk::new();
    p.raw(b"}(");
    for i in 0..n {
        p.str(&format!("w{i}"))
            .tensor("FloatStorage", &i.to_string(), (MIB / 4) as i32, None);
    }
    let pkl = p.raw(b"u").stop();
    let mut out = Vec::new();
    let mut central = vec![(
        "archive/data.pkl".to_string(),
        local(&mut out, "archive/data.pkl", &pkl),
    )];
    let shared = local(&mut out, "archive/data/0", &vec![0u8; MIB]);
    central.extend((0..n).map(|i| (format!("archive/data/{i}"), shared)));
    let zip = finish(out, &central);
    assert!(zip.len() < 2 * MIB);
    over_limit(
        "shared.pth",
        &zip,
        &["\"archive/data/0\"", "\"archive/data/1\"", "overlap"],
    );
}

/// An entry whose data holds another entry's local header.
#[test]
fn zip_entry_inside_another() {
    let Some(_serial) = isolated("zip_entry_inside_another") else {
        return;
    };
    let mut p = Pk::new();
    p.raw(b"}(").str("w").tensor("FloatStorage", "0", 1, None);
    let pkl = p.raw(b"u").stop();
    // Two entries, stored as the data of a third that spans them, all three in the directory.
    let mut inner = Vec::new();
    let w = local(&mut inner, "archive/data/0", &[0u8; 4]);
    let pk = local(&mut inner, "archive/data.pkl", &pkl);
    let mut out = Vec::new();
    let big = local(&mut out, "archive/big", &inner);
    let shift = |(at, crc, size): At| (at + 30 + "archive/big".len() as u32, crc, size);
    let central = [
        ("archive/big".to_string(), big),
        ("archive/data/0".to_string(), shift(w)),
        ("archive/data.pkl".to_string(), shift(pk)),
    ];
    let out = finish(out, &central);
    over_limit("nested.pth", &out, &["\"archive/big\"", "overlap"]);
    // The same entries without the spanning one: a good archive.
    let good = zip_of(&[("archive/data/0", &[0u8; 4]), ("archive/data.pkl", &pkl)]);
    assert_eq!(read_bounded("good.pth", &good).unwrap().tensors.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// storages read as several dtypes are copied once

/// A legacy file whose one 24 MiB storage is read through views as all ten dtypes: it used to be
/// copied once per dtype (240 MiB); now once, every view sharing it.
#[test]
fn legacy_storage_read_as_every_dtype_is_copied_once() {
    let Some(_serial) = isolated("legacy_storage_read_as_every_dtype_is_copied_once") else {
        return;
    };
    let n = 24 * MIB;
    let classes = [
        ("ByteStorage", 1),
        ("CharStorage", 1),
        ("BoolStorage", 1),
        ("ShortStorage", 2),
        ("HalfStorage", 2),
        ("BFloat16Storage", 2),
        ("IntStorage", 4),
        ("FloatStorage", 4),
        ("LongStorage", 8),
        ("DoubleStorage", 8),
    ];
    let mut p = Pk::new();
    p.raw(b"}(");
    for (i, (class, size)) in classes.iter().enumerate() {
        let view = if i == 0 { None } else { Some(0) };
        p.str(&format!("t{i}"))
            .tensor(class, "0", (n / size) as i32, view);
    }
    let main = p.raw(b"u").stop();
    let mut file = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    file.extend(b"\x80\x02M\xe9\x03.\x80\x02}.");
    file.extend(&main);
    file.extend(Pk::new().raw(b"]").str("0").raw(b"a").stop());
    file.extend((n as u64).to_le_bytes());
    file.extend((0..n).map(|i| (i % 2) as u8));
    let sd = read_bounded("views_legacy.pth", &file).unwrap();
    assert_eq!(sd.tensors.len(), classes.len());
    // Every view reads the same bytes.
    let bytes = |k: &str| {
        let t = sd.get(k).unwrap();
        let mut buf = vec![0u8; 64];
        t.view_dtype(tch::Kind::Uint8)
            .narrow(0, 0, 64)
            .copy_data_u8(&mut buf, 64);
        buf
    };
    let want: Vec<u8> = (0..64).map(|i| (i % 2) as u8).collect();
    for i in 0..classes.len() {
        assert_eq!(bytes(&format!("t{i}")), want, "t{i}");
    }
}
