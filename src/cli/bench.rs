//! `mobilenet bench`: forward-pass latency (p50, p90) and images per second per batch size,
//! with the settings used.

use super::common::{usize_in, ModelArgs, BATCH_SIZES, ITERATIONS, RESOLUTIONS, THREADS};
use mobilenet::bench::{bench_batch, BenchRow};
use mobilenet::device::{DeviceChoice, Placement, Precision};
use mobilenet::info::CpuIsa;
use mobilenet::models::Model;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights file; random (seeded) weights when absent. Speed does not depend on the values.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// Comma-separated batch sizes, each 1 to 4096.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(BATCH_SIZES))]
    batch_sizes: Vec<i64>,
    /// Input resolution (square), 32 to 8192.
    #[arg(long, default_value_t = 224, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(RESOLUTIONS))]
    resolution: i64,
    /// Untimed passes per batch size, at most 100000.
    #[arg(long, default_value_t = 5, value_parser = usize_in(ITERATIONS))]
    warmup: usize,
    /// Timed passes per batch size, 1 to 100000.
    #[arg(long, default_value_t = 30, value_parser = usize_in(1..=*ITERATIONS.end()))]
    iters: usize,
    /// Intra-op threads, 1 to 1024 (libtorch's default: one per core).
    #[arg(long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(THREADS))]
    threads: Option<i32>,
    /// Keep BatchNorm separate instead of folding it into the convolutions.
    #[arg(long)]
    no_fold: bool,
    /// Keep libtorch's plain conv2d + activation on the CPU instead of the fused oneDNN kernel
    /// (see `Model::accelerate`).
    #[arg(long)]
    no_fuse: bool,
    /// Run the layers one by one (the fused kernel), instead of the whole forward compiled by
    /// libtorch's oneDNN Graph fuser (see `Model::compile_graph`; CPU fp32).
    #[arg(long)]
    no_graph: bool,
    /// Run the whole forward through libtorch (the compiled graph, or the layers one by one)
    /// instead of the direct oneDNN engine (see `Model::compile_engine`; CPU, BatchNorm folded,
    /// fp32, and bf16 where the CPU has avx512_bf16 or AMX). The engine picks oneDNN's
    /// layouts, whatever `--layout` says.
    #[arg(long)]
    no_engine: bool,
    /// Keep glibc's default malloc settings (large blocks mmapped and unmapped on every pass)
    /// instead of `mobilenet::alloc::keep_freed_memory`.
    #[arg(long)]
    default_malloc: bool,
    /// Activation and weight layout: auto (channels-last), nchw (contiguous), nhwc.
    #[arg(long, value_enum, default_value = "auto")]
    layout: Layout,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Auto,
    Nchw,
    Nhwc,
}

#[derive(Serialize)]
struct Report {
    arch: String,
    width_mult: f64,
    device: String,
    precision: Precision,
    layout: &'static str,
    bn_folded: bool,
    /// The fused oneDNN CPU kernel in use.
    fused: bool,
    /// The forward runs as one oneDNN Graph compiled graph.
    graph: bool,
    /// The forward runs as direct oneDNN calls (ahead of the graph).
    engine: bool,
    /// The oneDNN the engine links, when it runs.
    engine_onednn: Option<String>,
    /// glibc malloc keeps freed memory (`mobilenet::alloc::keep_freed_memory`).
    malloc_tuned: bool,
    threads: i32,
    /// The CPU's instruction sets of [`CpuIsa::FLAGS`].
    cpu_isa: Vec<String>,
    /// For bf16 on the CPU: `native` or `emulated` ([`CpuIsa::bf16_native`]).
    bf16_compute: Option<&'static str>,
    /// How bf16 runs on this CPU, in words (bf16 on the CPU only).
    #[serde(skip)]
    bf16_summary: Option<String>,
    resolution: i64,
    warmup: usize,
    libtorch_version: &'static str,
    results: Vec<BenchRow>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let malloc_tuned = !args.default_malloc && mobilenet::alloc::keep_freed_memory();
    let device = validate(&args)?;
    let model = prepare_model(&args, device)?;
    let cpu = CpuIsa::detect();
    let bf16_cpu = args.precision == Precision::Bf16 && device == tch::Device::Cpu;
    let mut results = Vec::new();
    for &bs in &args.batch_sizes {
        let row = bench_batch(&model, bs, args.resolution, args.warmup, args.iters)?;
        if !args.json {
            eprintln!(
                "batch {:>4}: p50 {:>9.3} ms  p90 {:>9.3} ms  {:>9.1} images/s",
                row.batch_size, row.p50_ms, row.p90_ms, row.images_per_s
            );
        }
        results.push(row);
    }
    let report = Report {
        arch: model.config().arch.to_string(),
        width_mult: model.config().width_mult,
        device: format!("{device:?}"),
        precision: args.precision,
        layout: if args.layout == Layout::Nchw {
            "nchw"
        } else {
            "nhwc"
        },
        bn_folded: model.is_folded(),
        fused: model.is_accelerated(),
        graph: model.has_graph(),
        engine: model.has_engine(),
        engine_onednn: model.has_engine().then(mobilenet::ffi::engine_version),
        malloc_tuned,
        threads: tch::get_num_threads(),
        bf16_compute: bf16_cpu.then_some(cpu.bf16),
        bf16_summary: bf16_cpu.then(|| cpu.bf16_summary()),
        cpu_isa: cpu.flags,
        resolution: args.resolution,
        warmup: args.warmup,
        libtorch_version: env!("MOBILENET_LIBTORCH_VERSION"),
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the numeric arguments, applies `--threads`, and resolves the device (where
/// `--precision` must run).
fn validate(args: &Args) -> anyhow::Result<tch::Device> {
    // The flags' ranges are checked as they are parsed.
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    anyhow::ensure!(
        !args.batch_sizes.is_empty(),
        "--batch-sizes needs at least one batch size"
    );
    let device = args.device.resolve()?;
    args.precision.check(device)?;
    Ok(device)
}

/// The model from `--weights` (or seeded random weights: speed does not depend on the values),
/// folded in fp32 unless `--no-fold` and then cast and moved, in the layout and with the fused
/// kernel and compiled graph that the flags leave on.
fn prepare_model(args: &Args, device: tch::Device) -> anyhow::Result<Model> {
    let placement = Placement {
        device,
        precision: args.precision,
        fold: !args.no_fold,
    };
    let cfg = args.model.config();
    let mut model = match &args.weights {
        Some(path) => Model::from_file_with(cfg, path, &placement)?,
        None => {
            tch::manual_seed(0);
            let mut model = Model::new(cfg, tch::Device::Cpu)?;
            model.place(&placement)?;
            model
        }
    };
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    model.set_channels_last(args.layout != Layout::Nchw)?;
    // Both need folded fp32 CPU weights and do nothing otherwise.
    if !args.no_fuse {
        model.accelerate()?;
    }
    if !args.no_engine && super::common::compile_engine("bench", &mut model)? {
        return Ok(model);
    }
    if !args.no_graph {
        // The fuser is process-wide; this process runs only our graph.
        mobilenet::ffi::enable_onednn_fusion(true);
        model.compile_graph()?;
    }
    Ok(model)
}

/// The settings line and one row per batch size.
fn print_table(report: &Report) {
    println!(
        "{} width {} on {} {} layout {} bn folded {} fused {} graph {} engine {} malloc tuned {} threads {} libtorch {}",
        report.arch,
        report.width_mult,
        report.device,
        report.precision,
        report.layout,
        report.bn_folded,
        report.fused,
        report.graph,
        report.engine,
        report.malloc_tuned,
        report.threads,
        report.libtorch_version
    );
    if let Some(onednn) = &report.engine_onednn {
        println!("engine: {onednn}");
    }
    if let Some(bf16) = &report.bf16_summary {
        println!("bf16 compute: {bf16}");
    }
    println!(
        "{:>6} {:>10} {:>10} {:>12}",
        "batch", "p50 ms", "p90 ms", "images/s"
    );
    for r in &report.results {
        println!(
            "{:>6} {:>10.3} {:>10.3} {:>12.1}",
            r.batch_size, r.p50_ms, r.p90_ms, r.images_per_s
        );
    }
}
