//! A bound on what a training step keeps for its backward, checked before training starts, so
//! that a batch and resolution that cannot fit are refused with an error instead of ending in
//! the kernel's out-of-memory killer (which takes the process, and can take its neighbours).
//!
//! The bound is a floor, never an estimate: every convolution's output is kept for its norm's
//! backward and every norm's (or activation's) output for the next layer's, so a step keeps at
//! least twice the sum of the convolutions' outputs per image. MobileNetV2 at 224 keeps 84 MB
//! per image in practice (3.3 times its 25.5 MiB of convolution outputs); the floor says 51 MiB.
//! A run refused by it could not have run; one that passes may still run out, and then libtorch's
//! allocation failure is reported as [`out_of_memory`] says.

use crate::models::{ModelConfig, Summary};
use crate::{Error, Result};

/// The bytes a training step keeps per image, at least: twice the convolutions' outputs, of
/// `element_bytes` each (4 for fp32, 2 under bf16/fp16 autocast).
pub fn kept_bytes_per_image(
    config: &ModelConfig,
    resolution: i64,
    element_bytes: u64,
) -> Result<u64> {
    let summary = Summary::for_config(config.clone(), resolution)?;
    let elements: u64 = summary
        .layers
        .iter()
        .filter(|r| r.output_shape.len() == 3 && r.kind != "squeeze-excite")
        .map(|r| {
            r.output_shape
                .iter()
                .map(|&d| d.max(0) as u64)
                .product::<u64>()
        })
        .sum();
    Ok(2 * elements * element_bytes)
}

/// The memory this process may use, in bytes: the least of the machine's RAM (`MemTotal`), the
/// cgroup's limit (`memory.max`, a container's) and the address-space limit (`RLIMIT_AS`).
/// `None` where none can be read.
pub fn memory_limit() -> Option<u64> {
    [resident_limit(), address_space_limit()]
        .into_iter()
        .flatten()
        .min()
}

/// The least of the machine's RAM (`MemTotal`) and the cgroup's `memory.max`.
fn resident_limit() -> Option<u64> {
    let mut limits = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        let total = text.lines().find_map(|l| {
            let kb = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kb.trim().parse::<u64>().ok()
        });
        limits.extend(total.map(|kb| kb * 1024));
    }
    if let Ok(text) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        limits.extend(text.trim().parse::<u64>().ok());
    }
    limits.into_iter().min()
}

/// `RLIMIT_AS`, where one is set.
fn address_space_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `rl`, which lives for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut rl) } == 0
            && rl.rlim_cur != libc::RLIM_INFINITY
        {
            return Some(rl.rlim_cur);
        }
    }
    None
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Refuses a step of `batch` images at `resolution` whose floor ([`kept_bytes_per_image`])
/// exceeds `limit` bytes.
pub fn check_fits(
    config: &ModelConfig,
    resolution: i64,
    batch: usize,
    element_bytes: u64,
    limit: u64,
) -> Result<()> {
    let per_image = kept_bytes_per_image(config, resolution, element_bytes)?;
    let need = per_image.saturating_mul(batch as u64);
    if need > limit {
        return Err(Error::config(
            "batch size",
            format!(
                "a training step of {batch} images of {resolution}x{resolution} keeps at least \
                 {:.1} GiB for the backward ({:.3} GiB per image), more than the {:.1} GiB this \
                 process may use: lower --batch-size or --resolution",
                gib(need),
                gib(per_image),
                gib(limit)
            ),
        ));
    }
    Ok(())
}

/// A `/proc/self/status` field in bytes (`VmPeak:  123 kB`).
fn status_bytes(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let kb = l.strip_prefix(field)?.trim().strip_suffix("kB")?;
        kb.trim().parse::<u64>().ok().map(|kb| kb * 1024)
    })
}

/// oneDNN reports a failed allocation (its scratchpad, a kernel's code) as "could not create a
/// primitive", with no status in the text; so does a layout it cannot run. Under an
/// address-space or memory limit either may come first in a step that does not fit. Taken as
/// out of memory when the process came within half of a limit: its peak address space
/// (`VmPeak`) against `RLIMIT_AS`, or its peak resident memory (`VmHWM`) against the RAM or the
/// cgroup's `memory.max`. `Some(why)`, naming the peak and the limit.
fn primitive_failed_near_the_limit(text: &str) -> Option<String> {
    if !text.contains("could not create a primitive") {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let address_space = status_bytes(&status, "VmPeak:").zip(address_space_limit());
    let resident = status_bytes(&status, "VmHWM:").zip(resident_limit());
    judge_primitive_failure(address_space, resident)
}

/// [`primitive_failed_near_the_limit`]'s verdict on `(peak, limit)` pairs of address space and
/// of resident memory.
fn judge_primitive_failure(
    address_space: Option<(u64, u64)>,
    resident: Option<(u64, u64)>,
) -> Option<String> {
    let near = |(peak, limit): (u64, u64)| peak >= limit / 2;
    let (peak, limit, what) = match (address_space, resident) {
        (Some(a), _) if near(a) => (a.0, a.1, "address space"),
        (_, Some(r)) if near(r) => (r.0, r.1, "memory"),
        _ => return None,
    };
    Some(format!(
        "oneDNN could not create a primitive at a peak of {:.1} GiB of {what}, of the {:.1} GiB \
         this process may use",
        gib(peak),
        gib(limit)
    ))
}

/// The error for a step of `batch` images at `resolution` that failed with `e`, where `e` is an
/// allocation failure: libtorch's ("DefaultCPUAllocator: can't allocate memory", or CUDA's "out
/// of memory"), or oneDNN's failure to create a primitive near this process's memory limit
/// ([`primitive_failed_near_the_limit`]). `None` for any other error.
pub fn out_of_memory(e: &Error, batch: usize, resolution: i64) -> Option<Error> {
    let text = e.to_string();
    let why = if text.contains("can't allocate memory") || text.contains("out of memory") {
        text.split("DefaultCPUAllocator: ")
            .nth(1)
            .unwrap_or(&text)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    } else {
        primitive_failed_near_the_limit(&text)?
    };
    Some(Error::config(
        "training",
        format!(
            "out of memory in a step of {batch} images of {resolution}x{resolution} ({why}): \
             lower --batch-size or --resolution"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Arch;

    #[test]
    fn the_floor_grows_with_the_square_of_the_resolution() {
        let config = ModelConfig::new(Arch::MobilenetV2);
        let at = |r| kept_bytes_per_image(&config, r, 4).unwrap();
        // 6,678,112 convolution output values per image at 224 (`mobilenet summary`), kept twice.
        assert_eq!(at(224), 2 * 6_678_112 * 4);
        assert!(at(448) > 3 * at(224));
        assert_eq!(kept_bytes_per_image(&config, 224, 2).unwrap() * 2, at(224));
        assert!(check_fits(&config, 224, 32, 4, 8 << 30).is_ok());
        let err = check_fits(&config, 224, 32, 4, 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lower --batch-size or --resolution"), "{err}");
    }

    #[test]
    fn onednn_primitive_failures_near_a_limit_are_out_of_memory() {
        const GIB: u64 = 1 << 30;
        // Not oneDNN's message: never judged.
        assert_eq!(primitive_failed_near_the_limit("shape mismatch"), None);
        // At 3.9 of a 4 GiB address space: out of memory, naming both.
        let why = judge_primitive_failure(Some((39 * GIB / 10, 4 * GIB)), None).unwrap();
        assert!(
            why.contains("a peak of 3.9 GiB of address space, of the 4.0 GiB"),
            "{why}"
        );
        // Far from both limits: a real oneDNN error, kept as it is.
        assert_eq!(
            judge_primitive_failure(Some((GIB, 4 * GIB)), Some((GIB, 24 * GIB))),
            None
        );
        // Resident memory near the RAM or the cgroup's limit, no address-space limit.
        let why = judge_primitive_failure(None, Some((13 * GIB, 24 * GIB))).unwrap();
        assert!(why.contains("13.0 GiB of memory, of the 24.0 GiB"), "{why}");
        // The old path: libtorch's own allocation failure.
        let e = Error::config("x", "DefaultCPUAllocator: can't allocate memory: 8 GB");
        assert!(out_of_memory(&e, 4, 512)
            .unwrap()
            .to_string()
            .contains("(can't allocate memory: 8 GB)"));
        assert!(out_of_memory(&Error::config("x", "shape mismatch"), 4, 512).is_none());
    }

    #[test]
    fn a_limit_is_found_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(memory_limit().is_some_and(|b| b > 1 << 20));
        }
    }
}
