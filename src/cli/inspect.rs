//! `mobilenet inspect FILE [--json] [--bench]`: what a weight file holds.

use mobilenet::error::escape;
use mobilenet::weights::{self, DType, StateDict};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A weight file: .pth/.pt/.bin (torch.save, zip or legacy), .safetensors or .ot (any
    /// extension: the format is read from the content).
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also time loading against reading the file's bytes and making one copy.
    #[arg(long)]
    bench: bool,
    /// Repetitions for --bench (the median is reported).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
}

fn dtype(t: &tch::Tensor) -> String {
    DType::from_kind(t.kind())
        .map(|d| d.name().to_string())
        .unwrap_or_else(|| format!("{:?}", t.kind()))
}

#[derive(serde::Serialize)]
struct Bench {
    iters: u32,
    /// Median milliseconds of `std::fs::read` plus one copy of the bytes into a tensor.
    read_and_copy_ms: f64,
    /// Median milliseconds of `weights::read`.
    load_ms: f64,
    /// load_ms / read_and_copy_ms.
    ratio: f64,
    /// The fastest of the repetitions (less sensitive to other load on the machine).
    read_and_copy_min_ms: f64,
    load_min_ms: f64,
}

/// (median, min) in milliseconds.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (v[v.len() / 2].as_secs_f64() * 1e3, v[0].as_secs_f64() * 1e3)
}

fn bench(args: &Args) -> anyhow::Result<Bench> {
    let (mut base, mut load) = (Vec::new(), Vec::new());
    for _ in 0..args.iters {
        let t0 = Instant::now();
        let bytes = std::fs::read(&args.file)?;
        let copy =
            tch::Tensor::f_empty([bytes.len() as i64], (tch::Kind::Uint8, tch::Device::Cpu))?;
        // SAFETY: `copy` is a fresh contiguous CPU byte tensor of exactly `bytes.len()` bytes.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(copy.data_ptr() as *mut u8, bytes.len()) };
        dst.copy_from_slice(&bytes);
        std::hint::black_box(&copy);
        drop((bytes, copy));
        base.push(t0.elapsed());
        let t0 = Instant::now();
        let sd = weights::read(&args.file)?;
        std::hint::black_box(&sd);
        drop(sd);
        load.push(t0.elapsed());
    }
    let ((read_and_copy_ms, read_and_copy_min_ms), (load_ms, load_min_ms)) =
        (stats(base), stats(load));
    Ok(Bench {
        iters: args.iters,
        read_and_copy_ms,
        load_ms,
        ratio: load_ms / read_and_copy_ms,
        read_and_copy_min_ms,
        load_min_ms,
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sd: StateDict = weights::read(&args.file)?;
    let arch = weights::detect_architecture(&sd);
    let bench = if args.bench {
        Some(bench(&args)?)
    } else {
        None
    };
    let bytes = std::fs::metadata(&args.file)?.len();
    if args.json {
        let tensors: Vec<_> = sd
            .tensors
            .iter()
            .map(|(k, t)| serde_json::json!({"key": k, "dtype": dtype(t), "shape": t.size()}))
            .collect();
        let out = serde_json::json!({
            "file": args.file,
            "bytes": bytes,
            "format": sd.format.to_string(),
            "num_tensors": sd.tensors.len(),
            "num_parameters": sd.num_parameters(),
            "arch": arch,
            "tensors": tensors,
            "bench": bench,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    // Keys come from the file: control characters are escaped, never sent to the terminal.
    let keys: Vec<_> = sd.tensors.iter().map(|(k, _)| escape(k)).collect();
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0).max(3);
    for (k, (_, t)) in keys.iter().zip(&sd.tensors) {
        println!("{k:width$}  {:8}  {:?}", dtype(t), t.size());
    }
    println!();
    println!("file        {} ({bytes} bytes)", args.file.display());
    println!("format      {}", sd.format);
    println!("tensors     {}", sd.tensors.len());
    println!("parameters  {}", sd.num_parameters());
    match &arch {
        Some(a) => println!(
            "arch        {} (width {}, {} classes)",
            a.reference_name(),
            a.width_mult,
            a.num_classes
        ),
        None => println!("arch        unknown (no MobileNet key/shape signature matched)"),
    }
    if let Some(b) = bench {
        println!(
            "bench       load {:.2} ms, read bytes + one copy {:.2} ms, ratio {:.2} (median of {}; \
             min {:.2} vs {:.2} ms)",
            b.load_ms, b.read_and_copy_ms, b.ratio, b.iters, b.load_min_ms, b.read_and_copy_min_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}
