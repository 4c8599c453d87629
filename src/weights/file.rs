//! Reading a weight or reference file whole, safely: only a regular file (a FIFO, socket or
//! device is refused before it is read, so `/dev/zero` cannot fill memory and a FIFO cannot block
//! forever), and at most [`MAX_FILE_BYTES`].

use crate::file::{read_regular, Refusal};
use crate::{Error, Result};
use std::path::Path;

/// The largest weight or reference file read: 2 GiB. The largest MobileNet checkpoint is under
/// 100 MB; a sparse or growing file past this is refused before (or while) it is read.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The bytes of the regular file at `path`, at most [`MAX_FILE_BYTES`] of them
/// ([`crate::file::read_regular`]); errors name the file.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let too_big = |size: String| {
        let msg = format!(
            "{size} bytes, more than the {MAX_FILE_BYTES} bytes (2 GiB) a weight or reference \
             file may have: refused"
        );
        Error::file(path, msg)
    };
    read_regular(path, MAX_FILE_BYTES).map_err(|refusal| match refusal {
        Refusal::Io(e) => Error::io(path, e),
        Refusal::NotRegular(kind) => {
            Error::file(path, format!("not a regular file ({kind}): refused"))
        }
        Refusal::TooLarge { grew: false, bytes } => too_big(bytes.to_string()),
        Refusal::TooLarge { grew: true, .. } => too_big(format!("over {MAX_FILE_BYTES}")),
        Refusal::NoMemory { bytes } => Error::file(path, format!("cannot hold {bytes} bytes")),
    })
}
