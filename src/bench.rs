//! Latency and throughput of a model's forward pass: warm-up, then timed iterations with the
//! device synchronized, reported as p50/p90 latency and images per second.

use crate::models::Model;
use crate::{Error, Result};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Tensor};

/// Timings for one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub batch_size: i64,
    pub iters: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    /// `batch_size / p50`.
    pub images_per_s: f64,
    /// Median CPU time of the process per iteration, all threads together: on a shared machine
    /// it counts only the time the forward ran, not the time it waited for a core.
    pub cpu_ms: f64,
}

/// CPU time this process has used, all threads, in milliseconds.
fn process_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// Waits for queued CUDA work so that a timer measures it.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `model` (eval mode, no autograd) on random input of `batch_size` images at
/// `resolution`.
pub fn bench_batch(
    model: &Model,
    batch_size: i64,
    resolution: i64,
    warmup: usize,
    iters: usize,
) -> Result<BenchRow> {
    if batch_size < 1 || iters < 1 {
        return Err(Error::config(
            "bench",
            "batch size and iterations must be >= 1",
        ));
    }
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let x = Tensor::f_randn(
        [batch_size, 3, resolution, resolution],
        (model.kind(), device),
    )?;
    for _ in 0..warmup {
        let _ = model.f_forward_t(&x, false)?;
    }
    synchronize(device);
    let mut times = Vec::with_capacity(iters);
    let mut cpu = Vec::with_capacity(iters);
    for _ in 0..iters {
        let (start, cpu_start) = (Instant::now(), process_cpu_ms());
        let logits = model.f_forward_t(&x, false)?;
        synchronize(device);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        cpu.push(process_cpu_ms() - cpu_start);
        drop(logits);
    }
    cpu.sort_by(f64::total_cmp);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let p50 = pct(0.5);
    Ok(BenchRow {
        batch_size,
        iters,
        p50_ms: p50,
        p90_ms: pct(0.9),
        mean_ms: times.iter().sum::<f64>() / times.len() as f64,
        min_ms: sorted[0],
        images_per_s: batch_size as f64 / (p50 / 1e3),
        cpu_ms: cpu[cpu.len() / 2],
    })
}
