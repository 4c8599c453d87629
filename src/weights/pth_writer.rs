//! A `torch.save` writer for plain data: the zip format of torch >= 1.6 (`torch/serialization.py`
//! `_save`, written by `PyTorchStreamWriter` in `caffe2/serialize/inline_container.cc`), read
//! back by `torch.load(path, weights_only=True)`.
//!
//! **What it writes.** A [`Value`] ([`crate::value`]): dicts (plain or `OrderedDict`) with string or integer
//! keys, lists, tuples, strings, integers, floats, bools, `None` and tensors. The pickle
//! (protocol 2, as torch uses) names only `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2` and the `torch.*Storage` classes (in storage persistent
//! ids), all on the allow-list of `torch/_weights_only_unpickler.py`; nothing else is ever
//! pickled.
//!
//! **Tensors.** Each is written contiguous, on the CPU, with its dtype. A storage is written once:
//! tensors that are the same view of the same memory (tied weights, a tensor stored twice) share
//! one, as after `torch.save`; other views are written as tensors of their own.
//!
//! **Layout**, as torch's writer (miniz) lays it out: `archive/data.pkl`,
//! `archive/.format_version` (`1`), `archive/.storage_alignment` (`64`), `archive/byteorder`,
//! `archive/data/0`, `archive/data/1`, ... (one entry per storage, numbered in the order the
//! pickle first names them), `archive/version` (`3`), `archive/.data/serialization_id`. Entries
//! are stored (not compressed), each one's data 64-byte aligned by an `FB` extra field of
//! padding, non-empty ones followed by a data descriptor; ZIP64 fields where a size or offset
//! reaches 4 GiB, ZIP64 end records always. torch's `calculate_storage_offsets` option, which
//! computes where storages lie from this layout instead of reading it, finds the same bytes.
//! Storages are written in this machine's byte order, which the `byteorder` record names.

use super::formats::{bytes_of, contiguous_cpu};
use super::zip::{CENTRAL_SIG, EOCD64_LOCATOR_SIG, EOCD64_SIG, EOCD_SIG, LOCAL_SIG};
use crate::value::{Key, Value};
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::Tensor;

/// Writes `value` as a `torch.save` zip file at `path`. Every tensor and key is checked before
/// the file is created, so a value that cannot be written leaves no file behind.
pub fn write(path: &Path, value: &Value) -> Result<()> {
    let Pickler { buf, storages, .. } = Pickler::pickle(path, value)?;

    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut zip = ZipWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let byteorder = if cfg!(target_endian = "big") {
        "big"
    } else {
        "little"
    };
    let io = |e: std::io::Error| Error::io(path, e);
    zip.record("data.pkl", &buf).map_err(io)?;
    zip.record(".format_version", b"1").map_err(io)?;
    zip.record(".storage_alignment", ALIGN.to_string().as_bytes())
        .map_err(io)?;
    zip.record("byteorder", byteorder.as_bytes()).map_err(io)?;
    for (key, (t, nbytes)) in storages.iter().enumerate() {
        zip.record(&format!("data/{key}"), bytes_of(t, *nbytes))
            .map_err(io)?;
    }
    zip.record("version", b"3\n").map_err(io)?;
    let id = zip.serialization_id();
    zip.record(".data/serialization_id", id.as_bytes())
        .map_err(io)?;
    zip.finish().and_then(|mut out| out.flush()).map_err(io)
}

// Pickle opcodes (Python's `pickle.py` names), protocol 2.
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const EMPTY_LIST: u8 = b']';
const APPENDS: u8 = b'e';
const EMPTY_DICT: u8 = b'}';
const SETITEMS: u8 = b'u';
const GLOBAL: u8 = b'c';
const REDUCE: u8 = b'R';
const BINPERSID: u8 = b'Q';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';

/// Items per `APPENDS` / `SETITEMS`, as Python's pickler batches them.
const BATCH: usize = 1000;

/// Where a value is in the value written, for messages: `model.features.0.weight`,
/// `param_groups[0].lr`, or `the value` itself.
fn label(at: &str) -> &str {
    if at.is_empty() {
        "the value"
    } else {
        at
    }
}

/// The pickle of a value, and the storages it names (storage key `i` is `storages[i]`).
struct Pickler<'p> {
    path: &'p Path,
    buf: Vec<u8>,
    /// Memo slots of the globals and constant strings written so far.
    memo: HashMap<String, u32>,
    /// Contiguous CPU tensors and their sizes in bytes.
    storages: Vec<(Tensor, usize)>,
    /// Storage key by the identity of the tensor it was written for.
    storage_of: HashMap<TensorId, usize>,
}

/// A tensor's identity: the same memory viewed the same way.
#[derive(PartialEq, Eq, Hash)]
struct TensorId {
    ptr: usize,
    device: tch::Device,
    kind: tch::Kind,
    shape: Vec<i64>,
    stride: Vec<i64>,
}

impl<'p> Pickler<'p> {
    fn new(path: &'p Path) -> Self {
        Pickler {
            path,
            buf: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
            storage_of: HashMap::new(),
        }
    }

    /// The pickle of `value` (`path`: the file it is for, named in errors).
    fn pickle(path: &'p Path, value: &Value) -> Result<Self> {
        let mut p = Pickler::new(path);
        p.buf.extend([PROTO, 2]);
        p.value(value, "")?;
        p.buf.push(STOP);
        Ok(p)
    }

    fn value(&mut self, v: &Value, at: &str) -> Result<()> {
        match v {
            Value::None => self.buf.push(NONE),
            Value::Bool(b) => self.buf.push(if *b { NEWTRUE } else { NEWFALSE }),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => {
                self.buf.push(BINFLOAT);
                self.buf.extend(f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::List(items) => {
                self.buf.push(EMPTY_LIST);
                for (n, chunk) in items.chunks(BATCH).enumerate() {
                    self.buf.push(MARK);
                    for (i, item) in chunk.iter().enumerate() {
                        self.value(item, &format!("{at}[{}]", n * BATCH + i))?;
                    }
                    self.buf.push(APPENDS);
                }
            }
            Value::Tuple(items) => {
                self.buf.push(MARK);
                for (i, item) in items.iter().enumerate() {
                    self.value(item, &format!("{at}[{i}]"))?;
                }
                self.buf.push(TUPLE);
            }
            Value::Dict(d) => {
                self.buf.push(EMPTY_DICT);
                self.entries(d.entries(), at)?;
            }
            Value::OrderedDict(d) => {
                self.new_ordered_dict();
                self.entries(d.entries(), at)?;
            }
            Value::Tensor(t) => self.tensor(t, at)?,
        }
        Ok(())
    }

    /// `SETITEMS` of a dict's entries onto the dict on the stack.
    /// (A [`crate::value::Dict`] holds each key once, as Python's do.)
    fn entries(&mut self, entries: &[(Key, Value)], at: &str) -> Result<()> {
        for chunk in entries.chunks(BATCH) {
            self.buf.push(MARK);
            for (k, v) in chunk {
                let name = match k {
                    Key::Str(s) => {
                        self.str(s);
                        s.clone()
                    }
                    Key::Int(i) => {
                        self.int(*i);
                        i.to_string()
                    }
                };
                let inner = if at.is_empty() {
                    name
                } else {
                    format!("{at}.{name}")
                };
                self.value(v, &inner)?;
            }
            self.buf.push(SETITEMS);
        }
        Ok(())
    }

    /// `collections.OrderedDict()`.
    fn new_ordered_dict(&mut self) {
        self.global("collections\nOrderedDict\n");
        self.buf.extend([EMPTY_TUPLE, REDUCE]);
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, the
    /// storage as the persistent id `('storage', torch.<Type>Storage, key, 'cpu', numel)`.
    fn tensor(&mut self, t: &Tensor, at: &str) -> Result<()> {
        let id = TensorId {
            ptr: t.data_ptr() as usize,
            device: t.device(),
            kind: t.kind(),
            shape: t.size(),
            stride: t.stride(),
        };
        let (c, dtype) = contiguous_cpu(self.path, label(at), t)?;
        let numel = c.numel();
        let key = match self.storage_of.get(&id) {
            Some(&key) => key,
            None => {
                self.storages
                    .push((c.shallow_clone(), numel * dtype.size()));
                self.storage_of.insert(id, self.storages.len() - 1);
                self.storages.len() - 1
            }
        };
        self.global("torch._utils\n_rebuild_tensor_v2\n");
        self.buf.extend([MARK, MARK]);
        self.memo_str("storage");
        self.global(&format!("torch\n{}\n", dtype.storage_class()));
        self.str(&key.to_string());
        self.memo_str("cpu");
        self.int(numel as i64);
        self.buf.extend([TUPLE, BINPERSID]);
        self.int(0);
        self.ints(&c.size());
        self.ints(&c.stride());
        self.buf.push(NEWFALSE);
        self.new_ordered_dict();
        self.buf.extend([TUPLE, REDUCE]);
        Ok(())
    }

    /// A tuple of integers.
    fn ints(&mut self, v: &[i64]) {
        self.buf.push(MARK);
        for &i in v {
            self.int(i);
        }
        self.buf.push(TUPLE);
    }

    /// The shortest of Python's binary integer opcodes that holds `i`.
    fn int(&mut self, i: i64) {
        if let Ok(b) = u8::try_from(i) {
            self.buf.extend([BININT1, b]);
        } else if let Ok(w) = u16::try_from(i) {
            self.buf.push(BININT2);
            self.buf.extend(w.to_le_bytes());
        } else if let Ok(d) = i32::try_from(i) {
            self.buf.push(BININT);
            self.buf.extend(d.to_le_bytes());
        } else {
            // Little-endian two's complement, without the bytes that only repeat the sign.
            let bytes = i.to_le_bytes();
            let mut n = bytes.len();
            while n > 1 && (bytes[n - 1] == 0 || bytes[n - 1] == 0xff) {
                let sign = bytes[n - 1] == 0xff;
                if (bytes[n - 2] & 0x80 != 0) != sign {
                    break;
                }
                n -= 1;
            }
            self.buf.extend([LONG1, n as u8]);
            self.buf.extend(&bytes[..n]);
        }
    }

    fn str(&mut self, s: &str) {
        self.buf.push(BINUNICODE);
        self.buf.extend((s.len() as u32).to_le_bytes());
        self.buf.extend(s.as_bytes());
    }

    /// `GLOBAL module\nname\n`, memoized: written once, fetched after.
    fn global(&mut self, spec: &str) {
        if !self.get(spec) {
            self.buf.push(GLOBAL);
            self.buf.extend(spec.as_bytes());
            self.put(spec);
        }
    }

    /// A constant string, memoized.
    fn memo_str(&mut self, s: &str) {
        if !self.get(s) {
            self.str(s);
            self.put(s);
        }
    }

    /// Pushes the memoized value `what`; `false` if there is none yet.
    fn get(&mut self, what: &str) -> bool {
        let Some(&slot) = self.memo.get(what) else {
            return false;
        };
        match u8::try_from(slot) {
            Ok(b) => self.buf.extend([BINGET, b]),
            Err(_) => {
                self.buf.push(LONG_BINGET);
                self.buf.extend(slot.to_le_bytes());
            }
        }
        true
    }

    /// Memoizes the value on top of the stack as `what`.
    fn put(&mut self, what: &str) {
        let slot = self.memo.len() as u32;
        self.memo.insert(what.to_string(), slot);
        match u8::try_from(slot) {
            Ok(b) => self.buf.extend([BINPUT, b]),
            Err(_) => {
                self.buf.push(LONG_BINPUT);
                self.buf.extend(slot.to_le_bytes());
            }
        }
    }
}

/// The alignment of entry data (torch's `storage_alignment`).
const ALIGN: u64 = 64;
/// Sizes and offsets from this value on go to ZIP64 fields (miniz's threshold).
const ZIP64_FROM: u64 = 0xFFFF_FFFF;
/// A 32-bit field whose value is in a ZIP64 field.
const IN_ZIP64: u32 = 0xFFFF_FFFF;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
/// General purpose flags: UTF-8 names, and (bit 3) sizes and CRC in a data descriptor.
const FLAG_UTF8: u16 = 0x0800;
const FLAG_DESCRIPTOR: u16 = 0x0008;
/// MS-DOS date of 1980-01-01 (the earliest; entries carry no real time, for reproducible files).
const DOS_DATE: u16 = (1 << 5) | 1;
/// "Version needed to extract" of ZIP64 records (4.5), and of the others (2.0).
const VERSION_ZIP64: u16 = 45;
const VERSION: u16 = 20;

/// A stored (uncompressed) zip archive written front to back, laid out as torch's writer does.
struct ZipWriter<W: Write> {
    out: W,
    /// Bytes written so far.
    pos: u64,
    /// [`ZIP64_FROM`] (lower in tests, to write ZIP64 fields into a small archive).
    zip64_from: u64,
    /// The central directory, written by [`finish`](ZipWriter::finish).
    central: Vec<u8>,
    entries: u64,
    /// Running hashes of the record names and CRCs, for the serialization id.
    names_hash: u64,
    crcs_hash: u64,
}

/// A little-endian byte builder.
trait Le {
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
}

impl Le for Vec<u8> {
    fn u16(&mut self, v: u16) {
        self.extend(v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend(v.to_le_bytes());
    }
}

/// `boost::hash_combine`, as torch combines the hashes of its serialization id.
fn hash_combine(seed: u64, v: u64) -> u64 {
    seed ^ v
        .wrapping_add(0x9e37_79b9)
        .wrapping_add(seed << 6)
        .wrapping_add(seed >> 2)
}

impl<W: Write> ZipWriter<W> {
    /// A 32-bit zip field: `v`, or [`IN_ZIP64`] when `v` goes to a ZIP64 field.
    fn field32(&self, v: u64) -> u32 {
        if v >= self.zip64_from {
            IN_ZIP64
        } else {
            v as u32
        }
    }

    /// The ZIP64 extra field of an entry of `size` bytes whose local header is at `offset`:
    /// the size if it reaches 4 GiB (twice: uncompressed, then compressed), the offset if it does.
    fn zip64_extra(&self, size: u64, offset: u64) -> Vec<u8> {
        let mut fields = Vec::new();
        if size >= self.zip64_from {
            fields.u64(size);
            fields.u64(size);
        }
        if offset >= self.zip64_from {
            fields.u64(offset);
        }
        if fields.is_empty() {
            return fields;
        }
        let mut extra = Vec::with_capacity(4 + fields.len());
        extra.u16(0x0001);
        extra.u16(fields.len() as u16);
        extra.extend(fields);
        extra
    }

    fn new(out: W) -> Self {
        ZipWriter {
            out,
            pos: 0,
            zip64_from: ZIP64_FROM,
            central: Vec::new(),
            entries: 0,
            names_hash: 0,
            crcs_hash: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes `archive/<name>` holding `data`, its data 64-byte aligned.
    fn record(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let name = format!("archive/{name}");
        let (offset, size) = (self.pos, data.len() as u64);
        let crc = crc32fast::hash(data);
        let zip64 = self.zip64_extra(size, offset);
        let version = if zip64.is_empty() {
            VERSION
        } else {
            VERSION_ZIP64
        };
        let flags = match size {
            0 => FLAG_UTF8,
            _ => FLAG_UTF8 | FLAG_DESCRIPTOR,
        };

        // Local header: the sizes and CRC follow the data (in the descriptor), as miniz writes.
        let data_at = offset + 30 + name.len() as u64 + zip64.len() as u64 + 4;
        let pad = (ALIGN - data_at % ALIGN) % ALIGN;
        let mut extra = zip64.clone();
        extra.extend(b"FB");
        extra.u16(pad as u16);
        extra.resize(extra.len() + pad as usize, b'Z');
        let mut h = Vec::with_capacity(30 + name.len() + extra.len());
        h.u32(LOCAL_SIG);
        h.u16(version);
        h.u16(flags);
        h.u16(0); // method: stored
        h.u16(0); // time
        h.u16(DOS_DATE);
        h.u32(0); // CRC, compressed and uncompressed size: in the descriptor
        h.u32(0);
        h.u32(0);
        h.u16(name.len() as u16);
        h.u16(extra.len() as u16);
        h.extend(name.as_bytes());
        h.extend(&extra);
        self.write(&h)?;
        self.write(data)?;
        if size > 0 {
            let mut d = Vec::with_capacity(24);
            d.u32(DESCRIPTOR_SIG);
            d.u32(crc);
            if zip64.is_empty() {
                d.u32(size as u32);
                d.u32(size as u32);
            } else {
                d.u64(size);
                d.u64(size);
            }
            self.write(&d)?;
        }

        let (size32, offset32) = (self.field32(size), self.field32(offset));
        let c = &mut self.central;
        c.u32(CENTRAL_SIG);
        c.u16(version); // made by
        c.u16(version);
        c.u16(flags);
        c.u16(0);
        c.u16(0);
        c.u16(DOS_DATE);
        c.u32(crc);
        c.u32(size32);
        c.u32(size32);
        c.u16(name.len() as u16);
        c.u16(zip64.len() as u16);
        c.u16(0); // comment
        c.u16(0); // disk
        c.u16(0); // internal attributes
        c.u32(0); // external attributes
        c.u32(offset32);
        c.extend(name.as_bytes());
        c.extend(&zip64);
        self.entries += 1;
        self.names_hash = hash_combine(self.names_hash, crc32fast::hash(name.as_bytes()) as u64);
        self.crcs_hash = hash_combine(self.crcs_hash, crc as u64);
        Ok(())
    }

    /// 40 decimal digits identifying the archive from its record names and contents (what torch
    /// writes to `.data/serialization_id`; nothing checks it).
    fn serialization_id(&self) -> String {
        format!("{:020}{:020}", self.names_hash, self.crcs_hash)
    }

    /// Writes the central directory and the end records (ZIP64 ones always, as torch does).
    fn finish(mut self) -> std::io::Result<W> {
        let (cd_offset, cd_size) = (self.pos, self.central.len() as u64);
        let central = std::mem::take(&mut self.central);
        self.write(&central)?;
        let eocd64_at = self.pos;
        let mut e = Vec::with_capacity(98);
        e.u32(EOCD64_SIG);
        e.u64(44); // size of the rest of this record
        e.u16(VERSION_ZIP64);
        e.u16(VERSION_ZIP64);
        e.u32(0); // this disk
        e.u32(0); // the central directory's disk
        e.u64(self.entries);
        e.u64(self.entries);
        e.u64(cd_size);
        e.u64(cd_offset);
        e.u32(EOCD64_LOCATOR_SIG);
        e.u32(0);
        e.u64(eocd64_at);
        e.u32(1); // disks
        e.u32(EOCD_SIG);
        e.u16(0);
        e.u16(0);
        e.u16(self.entries.min(0xFFFF) as u16);
        e.u16(self.entries.min(0xFFFF) as u16);
        e.u32(self.field32(cd_size));
        e.u32(self.field32(cd_offset));
        e.u16(0); // comment
        self.write(&e)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::pickle::{self, Node};
    use super::super::zip::Zip;
    use super::*;
    use crate::value::Dict;

    fn pickle_of(v: &Value) -> (Vec<u8>, usize) {
        let p = Pickler::pickle(Path::new("t.pth"), v).unwrap();
        (p.buf, p.storages.len())
    }

    #[test]
    fn ints_take_the_shortest_opcode_and_read_back() {
        let values = [
            0,
            255,
            256,
            65535,
            65536,
            -1,
            -129,
            i32::MIN as i64,
            i32::MAX as i64 + 1,
            -(1 << 40),
            1 << 40,
            i64::MIN,
            i64::MAX,
            0x80_0000_0000,
            -0x80_0000_0000,
        ];
        let list = Value::List(values.iter().map(|&i| Value::Int(i)).collect());
        let (buf, _) = pickle_of(&list);
        let pk = pickle::unpickle(&buf, 0, pickle::Options::default()).unwrap();
        let Node::List(items) = pk.node(pk.root) else {
            panic!("not a list: {:?}", pk.node(pk.root))
        };
        let got: Vec<i64> = items
            .iter()
            .map(|&i| match pk.node(i) {
                Node::Int(v) => *v,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, values);
        // 0..=255 in two bytes, 256..=65535 in three.
        let (b, _) = pickle_of(&Value::Int(255));
        assert_eq!(b, [PROTO, 2, BININT1, 255, STOP]);
        let (b, _) = pickle_of(&Value::Int(1 << 40));
        assert_eq!(b, [PROTO, 2, LONG1, 6, 0, 0, 0, 0, 0, 1, STOP]);
    }

    #[test]
    fn nested_values_read_back_with_our_unpickler() {
        let v = Value::Dict(
            Dict::new()
                .with("epoch", 3i64)
                .with("lr", 0.5f64)
                .with("state", Dict::new().with(0, "x"))
                .with(
                    "t",
                    Value::Tuple(vec![Value::None, true.into(), false.into()]),
                ),
        );
        let (buf, storages) = pickle_of(&v);
        assert_eq!(storages, 0);
        let pk = pickle::unpickle(&buf, 0, pickle::Options::default()).unwrap();
        let get = |k: &str| pk.node(pk.dict_get(pk.root, k).unwrap()).clone();
        assert_eq!(get("epoch"), Node::Int(3));
        assert_eq!(get("lr"), Node::Float(0.5));
        let Node::Tuple(t) = get("t") else { panic!() };
        let t: Vec<Node> = t.iter().map(|&i| pk.node(i).clone()).collect();
        assert_eq!(t, [Node::None, Node::Bool(true), Node::Bool(false)]);
        let state = pk.dict_get(pk.root, "state").unwrap();
        let entries = pk.dict_entries(state).unwrap();
        assert_eq!(pk.node(entries[0].0), &Node::Int(0));
        assert_eq!(pk.node(entries[0].1), &Node::Str("x".into()));
    }

    #[test]
    fn bad_dtypes_are_refused() {
        let err = |v: &Value| match Pickler::pickle(Path::new("t.pth"), v) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{v:?} was written"),
        };
        let t = Tensor::zeros([2], (tch::Kind::ComplexFloat, tch::Device::Cpu));
        let e = err(&Value::List(vec![Value::None, Value::Tensor(t)]));
        assert!(e.starts_with("t.pth: [1]: dtype ComplexFloat"), "{e}");
    }

    /// Writes entries of `sizes` bytes (ZIP64 fields from `zip64_from` on) and reads them back
    /// with our zip reader: names, bytes, and 64-byte aligned data.
    fn zip_round_trip(sizes: &[usize], zip64_from: u64) {
        let data = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|j| (i * 7 + j) as u8).collect() };
        let mut zip = ZipWriter::new(Vec::new());
        zip.zip64_from = zip64_from;
        for (i, &n) in sizes.iter().enumerate() {
            zip.record(&format!("data/{i}"), &data(i, n)).unwrap();
        }
        let out = zip.finish().unwrap();
        let parsed = Zip::parse(&out).unwrap();
        assert_eq!(parsed.entries.len(), sizes.len());
        for (i, e) in parsed.entries.iter().enumerate() {
            assert_eq!(e.name, format!("archive/data/{i}"));
            let bytes = parsed.read(e).unwrap();
            let at = bytes.as_ptr() as usize - out.as_ptr() as usize;
            assert_eq!(at % 64, 0, "{} at {at}", e.name);
            assert_eq!(bytes, &data(i, sizes[i])[..]);
        }
    }

    #[test]
    fn zip_entries_are_aligned_and_read_back() {
        zip_round_trip(&[297, 0, 1, 64, 63, 65, 1000], ZIP64_FROM);
    }

    #[test]
    fn zip64_fields_read_back() {
        // Archives past 4 GiB are too big for a test: a lower threshold writes the same fields.
        zip_round_trip(&[297, 0, 1, 64, 1000], 0);
        zip_round_trip(&[10, 300, 5, 0, 1000, 7], 200);
    }
}
