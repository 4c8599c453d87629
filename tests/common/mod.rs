//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// The `mobilenet` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mobilenet");

/// A file under `fixtures/models/` (written by `weights/export.py fixtures`).
pub fn model_fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/models")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make fixtures`",
        p.display()
    );
    p
}
