//! The library's error type: every message names the thing (layer, file, key, argument) and the
//! problem, with both shapes where a shape is wrong.

use std::path::PathBuf;

/// Errors of the `mobilenet` library. Each message already holds the underlying error's text,
/// so none is also chained as a `source` (which `{:#}` / anyhow would print a second time).
///
/// Errors about a weight file name it (`path`); those found inside it say where (`context`:
/// the format, the archive entry, the pickle's byte offset, the tensor's key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layer or model got an input it cannot take (wrong rank, channel count, batch size).
    #[error("{layer}: {msg}")]
    BadInput { layer: String, msg: String },
    /// A configuration value is out of range or does not parse.
    #[error("invalid {what}: {msg}")]
    Config { what: String, msg: String },
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file's content is not what it claims to be.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A weight file's content is not in any format we read (`head`: its first bytes).
    #[error(
        "{}: not a recognised weight file (starts with {}): expected a torch.save file (zip or \
         legacy), safetensors or tch .ot",
        path.display(),
        hex(head)
    )]
    UnknownFormat { path: PathBuf, head: Vec<u8> },
    /// A pickle in a weight file names a global outside the allow-list (`os.system`, a model
    /// class): refused before anything else happens, nothing executed.
    #[error(
        "{}: {}refused global `{module}.{name}`: only the globals of a plain tensor checkpoint \
         are allowed (the promise of torch.load(weights_only=True)); nothing was executed. A \
         file from torch.save(model) must be re-saved as torch.save(model.state_dict())",
        path.display(),
        within(context),
        module = escape(module),
        name = escape(name)
    )]
    RefusedGlobal {
        path: PathBuf,
        context: String,
        /// Of the `GLOBAL` / `STACK_GLOBAL` opcode, in the pickle's bytes.
        offset: u64,
        module: String,
        name: String,
    },
    /// A weight file is truncated, corrupt or malformed (a bad size, offset, shape, opcode,
    /// checksum, or no state dict in it).
    #[error("{}: {}{}", path.display(), within(context), escape(msg))]
    Malformed {
        path: PathBuf,
        context: String,
        /// Where a pickle went wrong, in the pickle's bytes.
        offset: Option<u64>,
        msg: String,
    },
    /// A weight file would take more memory than its size allows (values or bytes shared and
    /// expanded over and over): refused.
    #[error("{}: {}{}", path.display(), within(context), escape(msg))]
    OverLimit {
        path: PathBuf,
        context: String,
        /// Where a pickle went over its copy budget, in the pickle's bytes.
        offset: Option<u64>,
        msg: String,
    },
    /// Tensors that cannot be written to a weight file (a reserved or duplicate name, a dtype
    /// the format lacks) or a write that failed.
    #[error("{}: {msg}", path.display())]
    Unwritable { path: PathBuf, msg: String },
    /// A state dict that does not fit a model: every problem at once, nothing copied. (Boxed
    /// slices keep `Error` small.)
    #[error(
        "{}: {format} ({}) does not match the model: {}{}",
        path.display(),
        plural(*tensors, "tensor"),
        plural(mismatch_count(missing, unexpected, shapes, dtypes), "problem"),
        mismatch_sections(missing, unexpected, shapes, dtypes)
    )]
    StateDictMismatch {
        path: PathBuf,
        format: crate::weights::Format,
        /// Tensors in the state dict.
        tensors: usize,
        /// Variables of the model the state dict lacks.
        missing: Box<[String]>,
        /// State dict entries the model has no variable for.
        unexpected: Box<[String]>,
        shapes: Box<[ShapeMismatch]>,
        dtypes: Box<[DtypeMismatch]>,
    },
    /// An error from libtorch: the first line of its message (libtorch appends a C++ backtrace).
    #[error("libtorch: {}", .0.to_string().lines().next().unwrap_or_default())]
    Torch(tch::TchError),
}

/// A state dict entry whose shape differs from its variable's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub key: String,
    pub expected: Vec<i64>,
    pub got: Vec<i64>,
}

/// A state dict entry whose dtype cannot load into its variable (by torch's dtype names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtypeMismatch {
    pub key: String,
    /// The entry's dtype (`bool`).
    pub tensor: String,
    /// The variable's dtype (`float32`).
    pub variable: String,
}

impl std::fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {:?}, got {:?}",
            self.key, self.expected, self.got
        )
    }
}

impl std::fmt::Display for DtypeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: a {} tensor cannot load into a {} variable",
            self.key, self.tensor, self.variable
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `context: ` (escaped) or nothing.
fn within(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!("{}: ", escape(context))
    }
}

/// `s` with its control characters (ESC, newline, ...) written as Rust escapes (`\u{1b}`,
/// `\n`), so that a name read from a file cannot move the cursor or clear the terminal. Every
/// message and table that prints a name from a file goes through it.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// The most items an error lists (then how many more).
pub const LISTED: usize = 20;

/// The first [`LISTED`] items, comma-separated, then `, ... (N more)`.
pub(crate) fn first_of<T: std::fmt::Display>(items: &[T]) -> String {
    let mut list: Vec<String> = items
        .iter()
        .take(LISTED)
        .map(|x| escape(&x.to_string()).into_owned())
        .collect();
    if items.len() > LISTED {
        list.push(format!("... ({} more)", items.len() - LISTED));
    }
    list.join(", ")
}

pub(crate) fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn mismatch_count(
    missing: &[String],
    unexpected: &[String],
    shapes: &[ShapeMismatch],
    dtypes: &[DtypeMismatch],
) -> usize {
    missing.len() + unexpected.len() + shapes.len() + dtypes.len()
}

/// One line per kind of problem: `\n  missing keys (2): a, b`.
fn mismatch_sections(
    missing: &[String],
    unexpected: &[String],
    shapes: &[ShapeMismatch],
    dtypes: &[DtypeMismatch],
) -> String {
    fn section<T: std::fmt::Display>(title: &str, items: &[T]) -> String {
        if items.is_empty() {
            return String::new();
        }
        format!("\n  {title} ({}): {}", items.len(), first_of(items))
    }
    [
        section("missing keys", missing),
        section("unexpected keys", unexpected),
        section("shape mismatches", shapes),
        section("unsupported dtypes", dtypes),
    ]
    .concat()
}

impl From<tch::TchError> for Error {
    fn from(error: tch::TchError) -> Self {
        Error::Torch(error)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_input(layer: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::BadInput {
            layer: layer.into(),
            msg: msg.into(),
        }
    }
    /// `Ok` when `ok`, else [`Error::config`]`(what, msg)`.
    pub fn check(ok: bool, what: &str, msg: String) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::config(what, msg))
        }
    }

    pub fn config(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            msg: msg.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    /// The file the error is about, if it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::File { path, .. }
            | Error::UnknownFormat { path, .. }
            | Error::RefusedGlobal { path, .. }
            | Error::Malformed { path, .. }
            | Error::OverLimit { path, .. }
            | Error::Unwritable { path, .. }
            | Error::StateDictMismatch { path, .. } => Some(path),
            Error::BadInput { .. } | Error::Config { .. } | Error::Torch(_) => None,
        }
    }
}
