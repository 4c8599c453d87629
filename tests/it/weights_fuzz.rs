//! Fuzz-style property test: valid weight files mutated and truncated by a deterministic PRNG;
//! `weights::read_bytes` must return Ok or Err, never panic (and never abort in libtorch, which
//! would kill the test process).
//!
//! Zip archives are fuzzed twice: as raw bytes (mostly caught by the CRC-32 check) and with the
//! mutation applied to `data.pkl` and the archive rebuilt with a correct CRC, so the restricted
//! unpickler and the storage checks see the damage.

use mobilenet::{weights, Error};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u8; 12] = [
    0x00, 0x01, 0x7f, 0x80, 0xff, b'(', b')', b'.', b'R', b'Q', b'K', b'X',
];

fn mutate(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(8) {
            0 => {
                let at = rng.below(len);
                if let Some(b) = d.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let at = rng.below(len);
                if let Some(b) = d.get_mut(at) {
                    *b = INTERESTING[rng.below(INTERESTING.len())];
                }
            }
            2 => d.truncate(rng.below(len)),
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            4 => {
                let at = rng.below(len);
                let n = rng.below(16).min(len - at.min(len));
                d.drain(at..at + n);
            }
            5 => {
                // Overwrite 4 or 8 bytes with a boundary integer (sizes, offsets, lengths).
                let at = rng.below(len);
                let v: u64 = [
                    0,
                    1,
                    0xff,
                    0xffff,
                    0x7fff_ffff,
                    0xffff_ffff,
                    u64::MAX,
                    1 << 40,
                ][rng.below(8)];
                let w = if rng.below(2) == 0 { 4 } else { 8 };
                for (i, b) in v.to_le_bytes()[..w].iter().enumerate() {
                    if let Some(x) = d.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            6 => {
                // Duplicate a chunk.
                if len > 0 {
                    let at = rng.below(len);
                    let n = rng.below(32).min(len - at);
                    let chunk = d[at..at + n].to_vec();
                    let to = rng.below(len);
                    d.splice(to..to, chunk);
                }
            }
            _ => {
                let at = rng.below(len);
                if let Some(b) = d.get_mut(at) {
                    *b = b.wrapping_add(1);
                }
            }
        }
    }
    d
}

/// A zip of stored entries with correct CRCs (enough for torch archives).
fn write_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes());
            if central {
                h.extend([0u8; 6]); // comment len, disk, internal attr
                h.extend(0u32.to_le_bytes()); // external attr
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(data);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// The entries of a zip written by torch or Python's zipfile (stored, no archive comment), from
/// its central directory.
fn read_zip(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
    let eocd = data.len() - 22;
    assert_eq!(u32_at(eocd), 0x0605_4b50, "zip with a comment");
    let (count, mut at) = (u16_at(eocd + 10), u32_at(eocd + 16));
    let mut entries = Vec::new();
    for _ in 0..count {
        let size = u32_at(at + 24);
        let (n, e, c) = (u16_at(at + 28), u16_at(at + 30), u16_at(at + 32));
        let name = String::from_utf8(data[at + 46..at + 46 + n].to_vec()).unwrap();
        let local = u32_at(at + 42);
        let start = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        entries.push((name, data[start..start + size].to_vec()));
        at += 46 + n + e + c;
    }
    entries
}

fn fixtures() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/weights");
    assert!(
        d.join("expected.json").exists(),
        "{} is missing: run `make fixtures`",
        d.display()
    );
    d
}

fn check(data: &[u8], what: &str, stats: &mut (u32, u32)) {
    let path = Path::new("fuzz.pth");
    match catch_unwind(AssertUnwindSafe(|| weights::read_bytes(data, path))) {
        Ok(Ok(sd)) => {
            // Whatever loaded must be usable.
            for (_, t) in &sd.tensors {
                let _ = t.f_contiguous().unwrap();
            }
            stats.0 += 1;
        }
        Ok(Err(e)) => {
            assert_eq!(e.path(), Some(path), "{what}: {e}");
            assert!(e.to_string().starts_with("fuzz.pth: "), "{what}: {e}");
            stats.1 += 1;
        }
        Err(_) => {
            let dump = std::env::temp_dir().join("mobilenet-fuzz-panic.bin");
            std::fs::write(&dump, data).unwrap();
            panic!(
                "{what}: read_bytes panicked (input saved to {})",
                dump.display()
            );
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let dir = fixtures();
    let files = [
        "dtypes.pth",
        "dtypes_legacy.pth",
        "dtypes.safetensors",
        "dtypes_bigendian.pth",
        "views.pth",
        "views_legacy.pth",
        "views_protocol4.pth",
        "handmade.pth",
        "wrapped_model_legacy.pth",
    ];
    let budget = Duration::from_secs(12);
    let start = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut stats = (0u32, 0u32);
    let mut iterations = 0;
    // Original files load.
    for f in files {
        let data = std::fs::read(dir.join(f)).unwrap();
        weights::read_bytes(&data, Path::new(f)).unwrap();
    }
    let sources: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    'outer: for round in 0..10_000 {
        for (name, data) in &sources {
            // Big files: fewer rounds.
            if data.len() > 100_000 && round % 100 != 0 {
                continue;
            }
            if start.elapsed() > budget {
                break 'outer;
            }
            let m = mutate(&mut rng, data);
            check(&m, &format!("{name} round {round}"), &mut stats);
            iterations += 1;
            if data.starts_with(b"PK") {
                // Mutate the pickle and keep the CRCs right.
                let mut entries = read_zip(data);
                for (n, d) in entries.iter_mut() {
                    if n.ends_with("data.pkl") || (rng.below(8) == 0 && n.contains("/data/")) {
                        *d = mutate(&mut rng, d);
                    }
                }
                check(
                    &write_zip(&entries),
                    &format!("{name} pickle round {round}"),
                    &mut stats,
                );
                iterations += 1;
            }
        }
    }
    eprintln!(
        "{iterations} mutated inputs in {:.1}s: {} loaded, {} refused",
        start.elapsed().as_secs_f64(),
        stats.0,
        stats.1
    );
    assert!(
        iterations >= 2000,
        "only {iterations} iterations in the time budget"
    );
    assert!(
        stats.1 > stats.0 / 10,
        "mutations should mostly be refused: {stats:?}"
    );
}

#[test]
fn rebuilt_zip_is_still_valid() {
    // The fuzzer's zip writer produces archives we read identically.
    let data = std::fs::read(fixtures().join("views.pth")).unwrap();
    let rebuilt = write_zip(&read_zip(&data));
    let a = weights::read_bytes(&data, Path::new("a")).unwrap();
    let b = weights::read_bytes(&rebuilt, Path::new("b")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ((_, x), (_, y)) in a.tensors.iter().zip(&b.tensors) {
        assert!(x.equal(y));
    }
}

#[test]
fn hostile_pickles_are_refused() {
    // Deep nesting, self-references, huge memo indices, bogus lengths: data only, bounded.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 200_000));
    deep.extend(std::iter::repeat_n(b'a', 199_999));
    deep.push(b'.');
    let mut cyclic = b"\x80\x02}q\x00h\x00h\x00s".to_vec(); // d[d] = d
    cyclic.push(b'.');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("deep", deep),
        ("cyclic", cyclic),
        ("memo", b"\x80\x02j\xff\xff\xff\xff.".to_vec()),
        ("long string", b"\x80\x02X\xff\xff\xff\xff.".to_vec()),
        (
            "bytes8",
            b"\x80\x02\x8e\xff\xff\xff\xff\xff\xff\xff\xff.".to_vec(),
        ),
        ("global no newline", b"\x80\x02cos".to_vec()),
        ("persid", b"\x80\x02K\x01Q.".to_vec()),
        ("reduce int", b"\x80\x02K\x01)R.".to_vec()),
    ];
    for (what, pkl) in cases {
        let zip = write_zip(&[("archive/data.pkl".to_string(), pkl)]);
        let r = catch_unwind(AssertUnwindSafe(|| {
            weights::read_bytes(&zip, Path::new("h.pth"))
        }));
        let err = r
            .unwrap_or_else(|_| panic!("{what}: panicked"))
            .unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{what}: {err}");
        assert!(err.to_string().starts_with("h.pth: "), "{what}: {err}");
    }
}
