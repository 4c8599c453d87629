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

/// Standard-normal `f32` values of `shape` from `seed`, drawn here (splitmix64 and Box-Muller)
/// rather than from libtorch's global generator, which every test running beside this one in
/// the one test crate shares: the same inputs on every run, whatever runs alongside.
pub fn normal(shape: &[i64], seed: u64) -> tch::Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let mut state = seed;
    let mut uniform = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        // In (0, 1): never 0, so the logarithm below is finite.
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        let (r, t) = (
            (-2.0 * uniform().ln()).sqrt(),
            std::f64::consts::TAU * uniform(),
        );
        values.extend([(r * t.cos()) as f32, (r * t.sin()) as f32]);
    }
    values.truncate(n);
    tch::Tensor::from_slice(&values).reshape(shape)
}

/// The named tensors of a fixture file written by `generator` (a `tests/gen_*.py` command line).
pub fn fixture_tensors(
    path: &Path,
    generator: &str,
) -> std::collections::HashMap<String, tch::Tensor> {
    let tensors = tch::Tensor::read_safetensors(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `make fixtures` (or `{generator}`)",
            path.display()
        )
    });
    tensors.into_iter().collect()
}

/// `(SUB/FILE, path)` of the files in `root/sub`, sorted; panics when there are none.
pub fn fixture_images(root: &Path, sub: &str) -> Vec<(String, PathBuf)> {
    let dir = root.join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make fixtures`", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no images in {}", dir.display());
    let name = |p: &Path| format!("{sub}/{}", p.file_name().unwrap().to_string_lossy());
    files.into_iter().map(|p| (name(&p), p)).collect()
}
