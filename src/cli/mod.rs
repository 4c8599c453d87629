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
    let quick_exit = matches!(cli.command, Command::Classify(_));
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
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", without_backtrace(&format!("{err:#}")));
            ExitCode::from(2)
        }
    };
    if quick_exit {
        exit_now(code);
    }
    code
}

/// Ends the process with `code` (0, 1 or 2) once everything written has left the process,
/// without running the C++ static destructors: libtorch's tear its operator registry down one
/// entry at a time (`torch::jit::deregisterOperator`, `Dispatcher::cleanup`), 0.2 s at every
/// exit on a 2-vCPU Zen 3, 5% of `classify`'s run over 512 images. The command has returned, so
/// its files are closed and its buffers flushed; stdout and C's streams (oneDNN's verbose
/// lines) are flushed here.
fn exit_now(code: ExitCode) -> ! {
    use std::io::Write;
    let status = if code == ExitCode::SUCCESS {
        0
    } else if code == ExitCode::from(1) {
        1
    } else {
        2
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: fflush(NULL) flushes every C stream; _exit ends the process at once.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(status)
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
