//! `mobilenet parity`: run a model on a PyTorch reference's input and compare. Exit 0 within
//! tolerance, 1 outside it, 2 on bad input.

use super::common::ModelArgs;
use mobilenet::device::{DeviceChoice, Placement, Precision};
use mobilenet::models::Model;
use mobilenet::parity;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights: torch.save .pth (zip or legacy), .safetensors or .ot.
    #[arg(long)]
    weights: PathBuf,
    /// Reference safetensors from `weights/export.py reference`: `input`, `logits`, and
    /// optionally `feature.*` and (train mode) `state.*`.
    #[arg(long)]
    reference: PathBuf,
    /// eval: running statistics; train: batch statistics and running-stat updates (dropout
    /// stays off on both sides).
    #[arg(long, value_enum, default_value = "eval")]
    mode: Mode,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Eval,
    Train,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let device = args.device.resolve()?;
    let reference = parity::read_reference(&args.reference)?;
    let placement = Placement {
        device,
        precision: args.precision,
        fold: false,
    };
    let model = Model::from_file_with(args.model.config(), &args.weights, &placement)?;
    let report = parity::check(&model, &reference, args.mode == Mode::Train, args.precision)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} {} on {} ({}), {} samples",
            model.config().arch,
            report.mode,
            report.device,
            report.precision,
            report.samples
        );
        for s in &report.stages {
            println!("  stage {s}");
        }
        println!("  {}", report.logits);
        if let Some(d) = &report.vs_fp32 {
            println!("  (against PyTorch's fp32) {d}");
        }
        println!(
            "  top-1 agree {}/{}, top-5 identical {}/{}",
            report.top1_agree, report.samples, report.top5_agree, report.samples
        );
        if let Some(b) = &report.worst_buffer {
            println!("  worst buffer {b}");
        }
        let t = report.tolerance;
        println!(
            "{}: tolerance max {} logit error <= {:e}, identical top-{}",
            if report.pass { "PASS" } else { "FAIL" },
            if t.relative { "relative" } else { "absolute" },
            t.logits,
            t.top_k
        );
    }
    Ok(if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
