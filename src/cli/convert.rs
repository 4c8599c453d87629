//! `mobilenet convert IN OUT [--arch A ...]`: a weight file into another format, chosen by OUT's
//! extension; with `--arch`, the file is first loaded strictly into that architecture.

use mobilenet::device::Placement;
use mobilenet::models::{Arch, Model, ModelConfig};
use mobilenet::nn::NormKind;
use mobilenet::weights;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Any weight file `inspect` reads (torch zip/legacy, safetensors, .ot).
    input: PathBuf,
    /// The output: `.safetensors`, `.pth` / `.pt` (`torch.save`'s zip format, an OrderedDict
    /// state dict that `torch.load(weights_only=True)` reads) or `.ot` (tch's
    /// `Tensor::save_multi`). Tensors are written contiguous, with the input's keys (wrappers
    /// unwrapped, `module.` stripped) and dtypes.
    output: PathBuf,
    /// Validate against this architecture first (every key and shape, one error listing all
    /// problems); `--width-mult`, `--num-classes` and `--norm` describe it further.
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    #[arg(long, default_value_t = 1.0, requires = "arch", allow_negative_numbers = true,
          value_parser = super::common::width_mult)]
    width_mult: f64,
    #[arg(long, default_value_t = 1000, requires = "arch",
          value_parser = clap::value_parser!(i64).range(1..=super::common::MAX_CLASSES))]
    num_classes: i64,
    #[arg(long, default_value = "batch", requires = "arch")]
    norm: NormKind,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !["safetensors", "pth", "pt", "ot"].contains(&ext.as_str()) {
        anyhow::bail!(
            "{}: unsupported output extension {ext:?} (use .safetensors, .pth, .pt or .ot)",
            args.output.display()
        );
    }
    let sd = weights::read(&args.input)?;
    if let Some(arch) = args.arch {
        let cfg = ModelConfig {
            width_mult: args.width_mult,
            num_classes: args.num_classes,
            norm: args.norm,
            ..ModelConfig::new(arch)
        };
        Model::from_state_dict(cfg, &sd, &args.input, &Placement::default())?;
        eprintln!(
            "{}: matches {arch} width {}",
            args.input.display(),
            args.width_mult
        );
    }
    match ext.as_str() {
        "safetensors" => weights::write_safetensors(&args.output, &sd.tensors)?,
        "pth" | "pt" => weights::write_pth(&args.output, &sd.tensors)?,
        _ => weights::write_ot(&args.output, &sd.tensors)?,
    }
    println!(
        "{} ({}) -> {} ({} tensors, {} parameters)",
        args.input.display(),
        sd.format,
        args.output.display(),
        sd.tensors.len(),
        sd.num_parameters()
    );
    Ok(ExitCode::SUCCESS)
}
