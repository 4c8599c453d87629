//! `mobilenet summary`: one row per layer (name, kind, output shape, parameters, mult-adds) and
//! totals; each depthwise + pointwise pair against the standard convolution it replaces.

use super::common::{ModelArgs, RESOLUTIONS};
use mobilenet::models::Summary;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Input resolution (square), 32 to 8192.
    #[arg(long, default_value_t = 224, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(RESOLUTIONS))]
    resolution: i64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // From the architecture's description: no weights are allocated.
    let summary = Summary::for_config(args.model.config(), args.resolution)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(ExitCode::SUCCESS)
}
