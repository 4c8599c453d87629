//! Helpers shared by the integration tests.

use mobilenet::parity::Diff;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Runs `cmd`, failing the test with its stderr unless it exits with success.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A tolerance on a [`Diff`]: on its `max_abs`, or on its `max_rel` (relative to the
/// reference's largest magnitude).
#[derive(Debug, Clone, Copy)]
pub enum Tol {
    Abs(f64),
    Rel(f64),
}

impl Display for Tol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tol::Abs(t) => write!(f, "max abs <= {t:e}"),
            Tol::Rel(t) => write!(f, "max rel <= {t:e}"),
        }
    }
}

/// The failures of a test that loops over configurations: each check records what failed with
/// its numbers and the loop goes on; [`Failures::assert_none`] then fails the test once, listing
/// every failing configuration.
#[derive(Debug, Default)]
pub struct Failures {
    failed: Vec<String>,
    checks: usize,
}

impl Failures {
    pub fn new() -> Failures {
        Failures::default()
    }

    /// Records `what: message` unless `ok`; returns `ok`.
    pub fn check(&mut self, ok: bool, what: impl Display, message: impl Display) -> bool {
        self.checks += 1;
        if !ok {
            self.failed.push(format!("{what}: {message}"));
        }
        ok
    }

    /// Records a failure unless `value <= limit` (NaN fails); returns whether it passed.
    pub fn at_most(&mut self, what: impl Display, value: f64, limit: f64) -> bool {
        self.check(value <= limit, what, format!("{value:.3e} > {limit:e}"))
    }

    /// Records a failure unless `d` is within `tol` (NaN fails), printing its worst element;
    /// returns whether it passed.
    pub fn within(&mut self, what: impl Display, d: &Diff, tol: Tol) -> bool {
        let (value, limit) = match tol {
            Tol::Abs(t) => (d.max_abs, t),
            Tol::Rel(t) => (d.max_rel, t),
        };
        self.check(value <= limit, what, format!("{d}; want {tol}"))
    }

    /// The value of `result`, or `None` with its error recorded.
    pub fn ok<T, E: Display>(&mut self, what: impl Display, result: Result<T, E>) -> Option<T> {
        self.checks += 1;
        result
            .map_err(|e| self.failed.push(format!("{what}: error: {e}")))
            .ok()
    }

    /// Fails the test listing every recorded failure, if any.
    pub fn assert_none(self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} checks failed:\n  {}",
            self.failed.len(),
            self.checks,
            self.failed.join("\n  ")
        );
    }
}
