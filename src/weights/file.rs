//! Reading a weight or reference file whole, safely: only a regular file (a FIFO, socket or
//! device is refused before it is read, so `/dev/zero` cannot fill memory and a FIFO cannot block
//! forever), and at most [`MAX_FILE_BYTES`].

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// The largest weight or reference file read: 2 GiB. The largest MobileNet checkpoint is under
/// 100 MB; a sparse or growing file past this is refused before (or while) it is read.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

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

/// The bytes of the regular file at `path`, at most [`MAX_FILE_BYTES`] of them. The file is
/// opened without blocking (a FIFO with no writer would block a plain open) and checked before
/// anything is read.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let msg = format!("not a regular file ({}): refused", kind(&meta));
        return Err(Error::file(path, msg));
    }
    let too_big = |size: String| {
        let msg = format!(
            "{size} bytes, more than the {MAX_FILE_BYTES} bytes (2 GiB) a weight or reference \
             file may have: refused"
        );
        Error::file(path, msg)
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len().to_string()));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(meta.len() as usize)
        .map_err(|e| Error::file(path, format!("cannot hold {} bytes: {e}", meta.len())))?;
    // The file may grow while it is read: never more than the cap.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(format!("over {MAX_FILE_BYTES}")));
    }
    Ok(bytes)
}
