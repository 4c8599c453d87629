//! Sharded batch inference: a deterministic 1/N slice of the inputs for one of N processes (a
//! Kubernetes Indexed Job's pod, a Slurm array task, or `--shard K/N` by hand), and the
//! resumable JSON Lines file each one writes ([`output`]).
//!
//! An input belongs to shard `⌊h·N / 2⁶⁴⌋` where `h` is the 64-bit FNV-1a hash of its key: its
//! path relative to the folder argument it was found under (on Unix, the path's bytes:
//! `cats/01.jpg` for `photos/cats/01.jpg` found under `photos`), or for a file argument its path
//! as given. The slice of a file depends on that key alone, so adding files elsewhere in the
//! tree, or moving the tree, moves no file to another shard. (Multiply-shift takes the hash's
//! high bits, which FNV-1a mixes well; its low bits depend only on the low bits of each byte.)
//! In Python: `(fnv1a64(key) * N) >> 64`.

pub mod output;

use crate::images::{self, Input};
use crate::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Shard `index` of `count`: the inputs whose key hashes into it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u64,
    count: u64,
}

impl Shard {
    /// Every input: shard 0 of 1.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; an error unless `index < count`.
    pub fn new(index: u64, count: u64) -> std::result::Result<Shard, String> {
        if count == 0 {
            return Err("N must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "K must be less than N (the shards of {count} are 0 to {})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// K, from 0.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// N.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the input with shard key `key` ([`key`]) belongs to this shard.
    pub fn contains(&self, key: &[u8]) -> bool {
        let slot = (u128::from(fnv1a64(key)) * u128::from(self.count)) >> 64;
        slot == u128::from(self.index)
    }

    /// The inputs under `paths` that belong to this shard, in [`images::find_images`]'s order
    /// (arguments in order, each folder's files sorted), and how many inputs there are in all
    /// shards. Paths that cannot be read are inputs too, each in one shard.
    pub fn find_images(&self, paths: &[PathBuf]) -> (Vec<Input>, usize) {
        let mut total = 0;
        let mut mine = Vec::new();
        for arg in paths {
            let found = images::find_images(std::slice::from_ref(arg));
            total += found.len();
            mine.extend(
                found
                    .into_iter()
                    .filter(|input| self.contains(key(arg, input.path()))),
            );
        }
        (mine, total)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `K/N`.
impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("expected K/N (e.g. 0/4) or auto, got {s:?}"))?;
        let number = |v: &str, what: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|e| format!("{what} in {s:?} is not a count: {e}"))
        };
        Shard::new(number(k, "K")?, number(n, "N")?)
    }
}

/// The shard key of `input`, found under the argument `arg`: its path relative to `arg` when
/// `arg` is a folder above it, else (a file argument) its path as given; as bytes.
pub fn key<'a>(arg: &Path, input: &'a Path) -> &'a [u8] {
    let relative = input
        .strip_prefix(arg)
        .ok()
        .filter(|r| !r.as_os_str().is_empty())
        .unwrap_or(input);
    relative.as_os_str().as_encoded_bytes()
}

/// The 64-bit FNV-1a hash of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `--shard`: a given shard, or `auto`, read from the job scheduler's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    Given(Shard),
    Auto,
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<ShardSpec, String> {
        match s {
            "auto" => Ok(ShardSpec::Auto),
            _ => s.parse().map(ShardSpec::Given),
        }
    }
}

/// The variable that gives a Kubernetes Indexed Job's shard count (its `.spec.completions`,
/// which Kubernetes does not pass to the pods).
pub const SHARDS_VAR: &str = "MOBILENET_SHARDS";

impl ShardSpec {
    /// The shard, and where it came from, `auto` reading `env` (e.g. `std::env::var`):
    /// - Kubernetes Indexed Job: K = `JOB_COMPLETION_INDEX`, N = [`SHARDS_VAR`];
    /// - Slurm array: K = (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN`) /
    ///   `SLURM_ARRAY_TASK_STEP` (the range's first index and step, 0 and 1 when unset),
    ///   N = `SLURM_ARRAY_TASK_COUNT`.
    ///
    /// An error when neither or both are set, or a value does not parse or fit.
    pub fn resolve(self, env: impl Fn(&str) -> Option<String>) -> Result<(Shard, &'static str)> {
        let auto = match self {
            ShardSpec::Given(shard) => return Ok((shard, "--shard")),
            ShardSpec::Auto => Auto { env: &env },
        };
        let fail = |msg: String| Error::config("--shard auto", msg);
        match (env("JOB_COMPLETION_INDEX"), env("SLURM_ARRAY_TASK_ID")) {
            (Some(_), Some(_)) => Err(fail(
                "both JOB_COMPLETION_INDEX (Kubernetes) and SLURM_ARRAY_TASK_ID (Slurm) are set; \
                 pass --shard K/N"
                    .into(),
            )),
            (Some(index), None) => {
                let k = auto.count("JOB_COMPLETION_INDEX", &index)?;
                let n = auto.required(
                    SHARDS_VAR,
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but MOBILENET_SHARDS \
                     is not: set it to the Job's .spec.completions",
                )?;
                let shard = Shard::new(k, n).map_err(|e| {
                    fail(format!(
                        "JOB_COMPLETION_INDEX={k}, MOBILENET_SHARDS={n}: {e}; MOBILENET_SHARDS \
                         must equal the Job's .spec.completions"
                    ))
                })?;
                Ok((shard, "JOB_COMPLETION_INDEX"))
            }
            (None, Some(id)) => {
                let id = auto.count("SLURM_ARRAY_TASK_ID", &id)?;
                let n = auto.required(
                    "SLURM_ARRAY_TASK_COUNT",
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not",
                )?;
                let min = auto.optional("SLURM_ARRAY_TASK_MIN", 0)?;
                let step = auto.optional("SLURM_ARRAY_TASK_STEP", 1)?.max(1);
                let offset = id.checked_sub(min).filter(|o| o % step == 0);
                let shard = offset
                    .ok_or_else(|| format!("task {id} is not in {min}, {min}+{step}, ..."))
                    .and_then(|o| Shard::new(o / step, n))
                    .map_err(|e| {
                        fail(format!(
                            "SLURM_ARRAY_TASK_ID={id} of SLURM_ARRAY_TASK_COUNT={n} \
                             (SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_STEP={step}): {e}; \
                             submit a range, e.g. sbatch --array=0-{}",
                            n.max(1) - 1
                        ))
                    })?;
                Ok((shard, "SLURM_ARRAY_TASK_ID"))
            }
            (None, None) => Err(fail(
                "neither JOB_COMPLETION_INDEX (a Kubernetes Indexed Job, with MOBILENET_SHARDS) \
                 nor SLURM_ARRAY_TASK_ID (a Slurm array) is set; pass --shard K/N"
                    .into(),
            )),
        }
    }
}

/// Reads counts from the environment for [`ShardSpec::resolve`].
struct Auto<'a, F: Fn(&str) -> Option<String>> {
    env: &'a F,
}

impl<F: Fn(&str) -> Option<String>> Auto<'_, F> {
    fn count(&self, name: &str, value: &str) -> Result<u64> {
        value.trim().parse().map_err(|e| {
            Error::config(
                "--shard auto",
                format!("{name}={value:?} is not a count: {e}"),
            )
        })
    }

    fn required(&self, name: &str, missing: &str) -> Result<u64> {
        match (self.env)(name) {
            Some(value) => self.count(name, &value),
            None => Err(Error::config("--shard auto", missing)),
        }
    }

    fn optional(&self, name: &str, default: u64) -> Result<u64> {
        (self.env)(name).map_or(Ok(default), |value| self.count(name, &value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn fnv1a64_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn parse_and_bounds() {
        assert_eq!("2/3".parse::<Shard>(), Shard::new(2, 3));
        assert_eq!("auto".parse::<ShardSpec>(), Ok(ShardSpec::Auto));
        for bad in ["3/3", "1/0", "0/0", "-1/2", "1", "a/b", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!("3/3".parse::<Shard>().unwrap_err().contains("less than N"));
    }

    #[test]
    fn every_key_in_exactly_one_shard_and_balanced() {
        for n in [1u64, 2, 3, 4, 7, 8] {
            let shards: Vec<Shard> = (0..n).map(|k| Shard::new(k, n).unwrap()).collect();
            let mut sizes = vec![0usize; n as usize];
            for i in 0..20_000 {
                let key = format!("class_{}/img_{i:05}.jpg", i % 13);
                let owners: Vec<usize> = (0..n as usize)
                    .filter(|&k| shards[k].contains(key.as_bytes()))
                    .collect();
                assert_eq!(owners.len(), 1, "{key} in shards {owners:?} of {n}");
                sizes[owners[0]] += 1;
            }
            let want = 20_000.0 / n as f64;
            for size in sizes {
                assert!(
                    (size as f64 - want).abs() < 0.05 * want,
                    "{n}: {size} vs {want}"
                );
            }
        }
    }

    #[test]
    fn key_is_relative_to_the_folder_argument() {
        let key = |arg: &str, input: &str| key(Path::new(arg), Path::new(input)).to_vec();
        assert_eq!(key("photos", "photos/cats/01.jpg"), b"cats/01.jpg");
        assert_eq!(key("photos/", "photos/cats/01.jpg"), b"cats/01.jpg");
        assert_eq!(key("/data/photos", "/data/photos/a.png"), b"a.png");
        assert_eq!(key("./x.png", "./x.png"), b"./x.png");
    }

    fn resolve(vars: &[(&str, &str)]) -> Result<(Shard, &'static str)> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ShardSpec::Auto.resolve(|name| vars.get(name).cloned())
    }

    #[test]
    fn auto_from_kubernetes_and_slurm() {
        let k8s = resolve(&[("JOB_COMPLETION_INDEX", "2"), (SHARDS_VAR, "4")]).unwrap();
        assert_eq!(k8s, (Shard::new(2, 4).unwrap(), "JOB_COMPLETION_INDEX"));
        let slurm = resolve(&[
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ])
        .unwrap();
        assert_eq!(slurm.0, Shard::new(3, 4).unwrap());
        let plain = resolve(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
        ]);
        assert_eq!(plain.unwrap().0, Shard::ALL);
    }

    #[test]
    fn auto_errors_say_what_is_missing() {
        let message = |vars: &[(&str, &str)]| resolve(vars).unwrap_err().to_string();
        assert!(message(&[]).contains("neither JOB_COMPLETION_INDEX"));
        assert!(message(&[("JOB_COMPLETION_INDEX", "0")]).contains("MOBILENET_SHARDS"));
        assert!(
            message(&[("JOB_COMPLETION_INDEX", "4"), (SHARDS_VAR, "4")]).contains("less than N")
        );
        assert!(
            message(&[("JOB_COMPLETION_INDEX", "x"), (SHARDS_VAR, "4")]).contains("not a count")
        );
        assert!(message(&[("SLURM_ARRAY_TASK_ID", "3")]).contains("SLURM_ARRAY_TASK_COUNT"));
        let gap = [
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        assert!(message(&gap).contains("--array=0-3"));
        let both = [("JOB_COMPLETION_INDEX", "0"), ("SLURM_ARRAY_TASK_ID", "0")];
        assert!(message(&both).contains("both"));
    }
}
