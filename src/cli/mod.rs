//! Subcommands of the `mobilenet` binary, one file each.

mod common;
mod info;
mod summary;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "mobilenet", version, about = "MobileNet V1/V2/V3 on libtorch: torchvision/timm weights, PyTorch parity, fast inference")]
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
}

/// Parses the arguments and runs the subcommand. Exit codes: 0 success, 1 the command's own
/// failure (e.g. parity out of tolerance, some inputs failed), 2 bad usage or bad input.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => info::run(args),
        Command::Summary(args) => summary::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
