//! The weights layer's internal error: what went wrong inside a file's bytes and where, before
//! the file's path is known. The byte-level readers (pickle, zip, safetensors) return a
//! [`Fault`]; [`Fault::in_file`] turns it into the crate's [`Error`], which names the file.

use crate::Error;
use std::path::Path;

/// What went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// A pickle global outside the allow-list (becomes [`Error::RefusedGlobal`]).
    RefusedGlobal { module: String, name: String },
    /// Truncated, corrupt or malformed ([`Error::Malformed`]).
    Malformed(String),
    /// More memory than the file's size allows ([`Error::OverLimit`]).
    OverLimit(String),
}

/// A problem found in a file's bytes, with where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub what: What,
    /// Where a pickle went wrong, in the pickle's bytes.
    pub offset: Option<u64>,
    /// Where in the file, outermost first (`torch zip (.pth)`, `archive/data.pkl`,
    /// `pickle at byte 52`).
    pub context: Vec<String>,
}

/// `Result` of the byte-level readers.
pub type Res<T> = std::result::Result<T, Fault>;

impl Fault {
    fn new(what: What) -> Fault {
        Fault {
            what,
            offset: None,
            context: Vec::new(),
        }
    }

    pub fn malformed(msg: impl Into<String>) -> Fault {
        Fault::new(What::Malformed(msg.into()))
    }

    pub fn over_limit(msg: impl Into<String>) -> Fault {
        Fault::new(What::OverLimit(msg.into()))
    }

    pub fn refused_global(module: &str, name: &str) -> Fault {
        Fault::new(What::RefusedGlobal {
            module: module.to_string(),
            name: name.to_string(),
        })
    }

    /// Found by a pickle at byte `offset` (said in the message as `pickle at byte N`).
    pub fn in_pickle_at(mut self, offset: usize) -> Fault {
        self.offset = Some(offset as u64);
        self.within(format!("pickle at byte {offset}"))
    }

    /// Found within `part` (an archive entry, a tensor's key, the format): said before the
    /// places already named.
    pub fn within(mut self, part: impl Into<String>) -> Fault {
        self.context.insert(0, part.into());
        self
    }

    /// The crate's error for this fault in the file at `path`.
    pub fn in_file(self, path: &Path) -> Error {
        let path = path.to_path_buf();
        let context = self.context.join(": ");
        let offset = self.offset;
        match self.what {
            What::RefusedGlobal { module, name } => Error::RefusedGlobal {
                path,
                context,
                offset: offset.unwrap_or(0),
                module,
                name,
            },
            What::Malformed(msg) => Error::Malformed {
                path,
                context,
                offset,
                msg,
            },
            What::OverLimit(msg) => Error::OverLimit {
                path,
                context,
                offset,
                msg,
            },
        }
    }
}

impl From<tch::TchError> for Fault {
    /// A libtorch failure on tensors already checked (an allocation, a view).
    fn from(e: tch::TchError) -> Fault {
        Fault::malformed(e.to_string())
    }
}

impl std::fmt::Display for Fault {
    /// The message without the file: `archive/data.pkl: pickle at byte 52: truncated (...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.context {
            write!(f, "{part}: ")?;
        }
        match &self.what {
            What::RefusedGlobal { module, name } => write!(f, "refused global `{module}.{name}`"),
            What::Malformed(msg) | What::OverLimit(msg) => f.write_str(msg),
        }
    }
}

/// Adds a place to the fault of a `Res`.
pub trait Within<T> {
    /// On error, found within `part` (see [`Fault::within`]).
    fn within(self, part: impl FnOnce() -> String) -> Res<T>;
}

impl<T> Within<T> for Res<T> {
    fn within(self, part: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|f| f.within(part()))
    }
}
