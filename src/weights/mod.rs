//! Weight files: torch.save (zip and legacy) through a restricted unpickler, safetensors, tch .ot;
//! strict loading.
//!
//! A file is read as downloaded (`mobilenet_v2-7ebf99e0.pth` from torchvision, `model.safetensors`
//! from timm, a training checkpoint), without Python, and a weight file can never run code.
//! The format is chosen by content, not by extension ([`detect_format`]):
//!
//! | format | recognised by | read by |
//! | --- | --- | --- |
//! | torch zip (`torch.save`, torch >= 1.6) | `PK\x03\x04` | our zip reader + restricted unpickler |
//! | torch legacy (torch < 1.6, `_use_new_zipfile_serialization=False`) | `\x80\x02\x8a\x0a` + magic `0x1950a86a20f9469cfc6c` | restricted unpickler |
//! | safetensors | 8-byte little-endian header length, then `{` | our header parser |
//! | tch `.ot` (`Tensor::save_multi`, `VarStore::save`) | a zip with `code/` or `constants.pkl` (a TorchScript archive) | restricted unpickler (TorchScript code is never compiled or run) |
//!
//! **Why our own unpickler.** candle-core has a pickle reader (`candle_core::pickle`), but it
//! would pull in a second tensor library (and its gemm kernels, another safetensors version) to
//! produce candle tensors we would convert again; it reads only the zip format, not the legacy
//! one; and it turns unknown globals into inert objects rather than refusing them. tch cannot do
//! it either (`Tensor::loadz_multi` fails on a torchvision state dict with "isGenericDict()
//! INTERNAL ASSERT FAILED"; `Tensor::load_multi` compiles the TorchScript code in an archive).
//! So `pickle.rs` here is a small data-only pickle machine with an allow-list of opcodes and
//! globals: `collections.OrderedDict`, `torch._utils._rebuild_tensor{,_v2,_v3}`,
//! `torch._utils._rebuild_parameter{,_with_state}`, `torch._tensor._rebuild_from_type_v2`, the
//! `torch.*Storage` classes, `torch` dtypes, `torch.Size`, `torch.device`, `_codecs.encode`.
//! Anything else (`os.system`, `builtins.eval`, `subprocess.Popen`, the model class of a
//! `torch.save(model)` file) is refused with an error naming the global, and nothing is ever
//! executed: the promise of `torch.load(weights_only=True)`.
//!
//! **Strictness.** Storage offsets, shapes and strides are honoured (tensors may be views sharing
//! one storage) and checked against the bytes that back them before libtorch sees them; zip
//! entries are CRC-checked; byte order (`byteorder`) is honoured. [`load_into`] compares every
//! key and shape and reports all problems in one error before copying anything.
//!
//! **Cost.** The file is read once; each storage is copied once into its tensor (zip entries are
//! slices of the file's bytes, no decompression). `mobilenet inspect --bench FILE` prints the
//! time of [`read`] next to reading the bytes and making one copy.
//!
//! **Bounded memory.** No file can make a read use more than a small multiple of its size: the
//! unpickler charges every copy of an earlier value against a budget proportional to its input
//! (memoized values expanded over and over are refused), zip entries may not share bytes,
//! safetensors entries must tile the data exactly (as the reference reader requires), a storage
//! is copied once whatever dtypes its tensors read it as, and the storages copied never add up
//! to more than the file (`tests/it/weights_limits.rs`). Only a regular file of at most
//! [`MAX_FILE_BYTES`] (2 GiB) is read, and it may hold at most one tensor per 64 bytes (at least
//! 4,096, at most 100,000 tensors; `tests/it/hostile_files.rs`).
//!
//! **Writing.** [`write_safetensors`], [`write_ot`], and the `torch.save` zip format with
//! [`write_pth`] (a state dict) or [`write_pth_value`] (a checkpoint of plain values:
//! dicts, lists, numbers, strings, tensors), which `torch.load(weights_only=True)` reads: the
//! pickle names no class outside its allow-list.
//!
//! **Errors** name the file and say where in it: [`Error::UnknownFormat`],
//! [`Error::RefusedGlobal`] (the global and the pickle's byte offset), [`Error::Malformed`]
//! (truncated or corrupt, at a byte offset where a pickle says one), [`Error::OverLimit`] (more
//! memory than the file's size allows), [`Error::StateDictMismatch`] (every problem of
//! [`load_into`] at once), [`Error::Io`] and [`Error::Unwritable`]. The byte-level readers
//! return an internal `Fault` (no path); [`read_bytes`] and the writers attach the file.

mod arch;
mod fault;
mod file;
mod formats;
mod pickle;
mod pth_writer;
mod strict;
mod torch_file;
mod zip;

pub use arch::{detect_architecture, ArchGuess};
pub use file::{read_file, MAX_FILE_BYTES};
pub use pickle::DType;
pub use strict::{load_into, LoadOptions};

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The format of a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Format {
    /// `torch.save` zip archive (torch >= 1.6; `.pth`, `.pt`, `.bin`).
    TorchZip,
    /// `torch.save` legacy format (torch < 1.6 or `_use_new_zipfile_serialization=False`).
    TorchLegacy,
    /// safetensors (`.safetensors`).
    Safetensors,
    /// tch's `Tensor::save_multi` / `VarStore::save` (`.ot`, a TorchScript archive).
    TchOt,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::TorchZip => "torch zip (.pth)",
            Format::TorchLegacy => "torch legacy (.pth, torch < 1.6)",
            Format::Safetensors => "safetensors",
            Format::TchOt => "tch (.ot)",
        })
    }
}

/// Whether a state-dict key names a norm layer's buffer (`running_mean`, `running_var`,
/// `num_batches_tracked`) rather than a parameter.
pub fn is_norm_buffer(key: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"]
        .iter()
        .any(|s| key == *s || key.ends_with(&format!(".{s}")))
}

/// The tensors of a weight file, on the CPU.
#[derive(Debug)]
pub struct StateDict {
    /// The file read (named in [`load_into`]'s errors).
    pub path: PathBuf,
    pub format: Format,
    /// In file order; checkpoint wrappers (`state_dict`, `model`, `model_state_dict`, ...)
    /// unwrapped and the DataParallel/DDP `module.` prefix stripped (safetensors: in the order
    /// of their data). Tensors keep the file's shapes, strides and offsets, as `torch.load`
    /// returns them; they are views into one buffer that holds every storage of the file (the
    /// load's single copy), so `Tensor::copy` one to own it alone.
    pub tensors: Vec<(String, Tensor)>,
}

impl StateDict {
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t)
    }

    /// Elements of the floating-point tensors, BatchNorm running statistics and counters
    /// (`running_mean`, `running_var`, `num_batches_tracked`) excluded.
    pub fn num_parameters(&self) -> i64 {
        self.tensors
            .iter()
            .filter(|(k, t)| t.is_floating_point() && !is_norm_buffer(k))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}

/// The format of a weight file from its first bytes, `None` if unknown. A zip archive is
/// [`Format::TorchZip`] here; [`read`] tells [`Format::TchOt`] apart by its entries.
pub fn detect_format(bytes: &[u8]) -> Option<Format> {
    formats::detect(bytes)
}

/// Reads a weight file of any supported format (chosen by content, not extension): a regular
/// file of at most [`MAX_FILE_BYTES`] ([`read_file`]). Errors name the file and the problem (see
/// the module's **Errors**).
pub fn read(path: &Path) -> Result<StateDict> {
    let bytes = read_file(path)?;
    read_bytes(&bytes, path)
}

/// [`read`] from bytes already in memory; `path` is only used in messages. Never panics on
/// any input: every size and offset is validated before libtorch sees it.
pub fn read_bytes(bytes: &[u8], path: &Path) -> Result<StateDict> {
    if bytes.is_empty() {
        return Err(fault::Fault::malformed("file is empty").in_file(path));
    }
    let Some(mut format) = formats::detect(bytes) else {
        return Err(Error::UnknownFormat {
            path: path.to_path_buf(),
            head: bytes.iter().take(8).copied().collect(),
        });
    };
    let tensors = match format {
        Format::TorchZip | Format::TchOt => torch_file::read_zip(bytes).map(|(t, script)| {
            if script {
                format = Format::TchOt;
            }
            t
        }),
        Format::TorchLegacy => torch_file::read_legacy(bytes),
        Format::Safetensors => formats::read_safetensors(bytes),
    }
    .and_then(|t| match t.is_empty() {
        true => Err(fault::Fault::malformed("the file holds no tensors")),
        false => Ok(t),
    })
    .map_err(|e| e.within(format.to_string()).in_file(path))?;
    Ok(StateDict {
        path: path.to_path_buf(),
        format,
        tensors: torch_file::strip_module_prefix(tensors),
    })
}

/// Reads a `torch.save` zip file of plain data, such as a training checkpoint (`{"model": ...,
/// "optimizer": ..., "epoch": ...}`), as a [`crate::value::Value`], with the limits and checks of
/// [`read`]. Tensors come back on the CPU.
pub fn read_value(path: &Path) -> Result<crate::value::Value> {
    let bytes = read_file(path)?;
    if formats::detect(&bytes) != Some(Format::TorchZip) {
        return Err(fault::Fault::malformed("not a torch.save zip file").in_file(path));
    }
    torch_file::read_zip_value(&bytes).map_err(|e| e.in_file(path))
}

/// Writes tensors as safetensors (contiguous, in the given order, `{"format": "pt"}` metadata),
/// readable by the `safetensors` Python package and timm.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    formats::write_safetensors(path, &mut out, tensors)
}

/// Writes tensors in tch's `.ot` format (`Tensor::save_multi`).
pub fn write_ot(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    formats::write_ot(path, tensors)
}

/// Writes tensors as a `torch.save` zip file (`.pth`): an `OrderedDict` of the names in the
/// given order, each tensor contiguous with its dtype, which `torch.load(path, weights_only=True)`
/// reads and `load_state_dict` takes.
pub fn write_pth(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = tensors.iter().find(|(k, _)| !seen.insert(k)) {
        return Err(Error::Unwritable {
            path: path.to_path_buf(),
            msg: format!("the key {name:?} appears twice"),
        });
    }
    pth_writer::write(path, &crate::value::Value::state_dict(tensors))
}

/// Writes a checkpoint as a `torch.save` zip file: nested dicts (string or integer keys),
/// lists, tuples, numbers, strings, `None` and tensors, read back by
/// `torch.load(path, weights_only=True)` as the same Python value. Tensors that are the same view
/// of the same memory share one storage in the file.
pub fn write_pth_value(path: &Path, value: &crate::value::Value) -> Result<()> {
    pth_writer::write(path, value)
}
