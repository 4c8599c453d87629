//! The library's error type: every message names the thing (layer, file, key, argument) and the
//! problem, with both shapes where a shape is wrong.

use std::path::PathBuf;

/// Errors of the `mobilenet` library. Each message already holds the underlying error's text,
/// so none is also chained as a `source` (which `{:#}` / anyhow would print a second time).
#[derive(Debug, thiserror::Error)]
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
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(tch::TchError),
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
}
