//! Reading a whole input file safely, for weight files, parity references and images alike: only
//! a regular file (a FIFO, socket or device is refused before anything is read, so `/dev/zero`
//! cannot fill memory and a FIFO cannot block forever), at most a given size (also when the file
//! grows while it is read), into memory reserved fallibly. Each caller words the refusal.

use std::io::Read;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug)]
pub enum Refusal {
    /// Opening, inspecting or reading failed.
    Io(std::io::Error),
    /// Not a regular file: `"a FIFO"`, `"a socket"`, `"a device"`, `"a folder"`, `"not a file"`.
    NotRegular(&'static str),
    /// Larger than the cap: `bytes` as its metadata says, or, when it `grew` while being read,
    /// the cap itself.
    TooLarge { bytes: u64, grew: bool },
    /// The memory for `bytes` could not be reserved.
    NoMemory { bytes: u64 },
}

/// What kind of file `meta` describes, when it is not a regular file.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a file"
    }
}

/// The bytes of the regular file at `path`, at most `max_bytes` of them. The file is opened
/// without blocking (a FIFO with no writer would block a plain open) and checked before anything
/// is read.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Refusal> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(Refusal::Io)?;
    let meta = file.metadata().map_err(Refusal::Io)?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular(kind(&meta)));
    }
    if meta.len() > max_bytes {
        let bytes = meta.len();
        return Err(Refusal::TooLarge { bytes, grew: false });
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(meta.len() as usize)
        .map_err(|_| Refusal::NoMemory { bytes: meta.len() })?;
    // The file may grow while it is read: never more than the cap.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(Refusal::Io)?;
    if bytes.len() as u64 > max_bytes {
        let bytes = max_bytes;
        return Err(Refusal::TooLarge { bytes, grew: true });
    }
    Ok(bytes)
}
