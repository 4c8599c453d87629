//! `mobilenet info [--json]`.

use mobilenet::info::Info;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let info = Info::collect();
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("mobilenet        {}", info.mobilenet_version);
    println!("tch              {}", info.tch_version);
    println!(
        "libtorch         {} ({})",
        info.libtorch_version, info.libtorch_lib
    );
    println!("cuda library     {}", info.cuda_library);
    println!("cuda built       {}", info.cuda_built);
    println!("cuda available   {}", info.cuda_available);
    println!("cuda devices     {}", info.cuda_device_count);
    for (i, name) in info.cuda_devices.iter().enumerate() {
        println!("  cuda:{i}         {name}");
    }
    let cudnn = match info.cudnn_version {
        Some(v) => format!("{} (version {v})", info.cudnn_available),
        None => info.cudnn_available.to_string(),
    };
    println!("cudnn            {cudnn}");
    println!("intra-op threads {}", info.intra_op_threads);
    println!("inter-op threads {}", info.inter_op_threads);
    println!("mkldnn           {}", info.mkldnn);
    println!("openmp           {}", info.openmp);
    println!("nccl             {}", info.nccl);
    println!("engine           {}", info.engine);
    println!("default device   {}", info.default_device);
    println!("cpu              {}", info.cpu.model);
    println!("cpu isa          {}", info.cpu.flags.join(" "));
    println!("cpu bf16         {}", info.cpu.bf16_summary());
    Ok(ExitCode::SUCCESS)
}
