//! Subcommands of the `mobilenet` binary, one file each.

mod bench;
mod classify;
mod common;
mod convert;
mod info;
mod inspect;
mod parity;
mod summary;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "mobilenet",
    version,
    about = "MobileNet V1/V2/V3 on libtorch: torchvision/timm weights, PyTorch parity, fast inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// libtorch version, CUDA devices, cuDNN, threads.
    Info(info::Args),
    /// Layer table: output shapes, parameters, mult-adds, separable vs standard convolutions.
    Summary(summary::Args),
    /// Compare a model's outputs with a PyTorch reference (exit 0 pass, 1 fail, 2 bad input).
    Parity(parity::Args),
    /// Forward-pass latency and throughput per batch size.
    Bench(bench::Args),
    /// What a weight file holds: format, keys, shapes, dtypes, parameters, architecture.
    Inspect(inspect::Args),
    /// Convert a weight file to .safetensors, .pth or .ot (by the output's extension).
    Convert(convert::Args),
    /// Top-k classes of image files and folders (streamed, batched; sharded with --shard).
    Classify(classify::Args),
    /// Fine-tune or train from scratch on an image folder; checkpoints PyTorch loads.
    Train(Box<train::Args>),
}

/// Parses the arguments and runs the subcommand. Exit codes: 0 success, 1 the command's own
/// failure (e.g. parity out of tolerance, some inputs failed), 2 bad usage or bad input.
pub fn main() -> ExitCode {
    // Die quietly on a closed pipe (`mobilenet inspect FILE | head`) like other Unix tools,
    // instead of panicking in println!.
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info::run(args),
        Command::Summary(args) => summary::run(args),
        Command::Parity(args) => parity::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Train(args) => train::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", without_backtrace(&format!("{err:#}")));
            ExitCode::from(2)
        }
    }
}

/// `message` without the C++ backtrace that libtorch appends to its errors (`Exception raised
/// from ... (most recent call first):` and the frames after it).
pub fn without_backtrace(message: &str) -> String {
    let cut = ["\nException raised from ", "\nframe #"]
        .iter()
        .filter_map(|marker| message.find(marker))
        .min()
        .unwrap_or(message.len());
    message[..cut].trim_end().to_string()
}
