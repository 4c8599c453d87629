//! `mobilenet train`: fine-tuning and training from scratch on an image folder, as
//! torchvision's `references/classification/train.py` does it, with checkpoints PyTorch loads.

use super::common::{
    check_arch, usize_in, width_mult, BATCH_SIZES, MAX_CLASSES, RESOLUTIONS, THREADS,
};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mobilenet::card::{replace_with, write_atomic, ModelCard};
use mobilenet::device::{DeviceChoice, Precision};
use mobilenet::ffi::Rendezvous;
use mobilenet::models::{Arch, Model, ModelConfig};
use mobilenet::nn::NormKind;
use mobilenet::train::augment::{eval_transform, Augment};
use mobilenet::train::data::ImageFolder;
use mobilenet::train::dist::Dist;
use mobilenet::train::memory;
use mobilenet::train::trainer::{OptimizerKind, Progress, ScheduleKind, TrainOptions, Trainer};
use mobilenet::train::EpochMetrics;
use mobilenet::value::{Dict, Value};
use mobilenet::weights::{self, LoadOptions, StateDict};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

const AFTER_HELP: &str = "\
Data: --data and --val are image folders with torchvision's ImageFolder semantics: one
sub-folder per class, classes sorted by name, images found recursively by extension (.jpg .jpeg
.png .ppm .bmp .pgm .tif .tiff .webp, any case). Without --val, a seeded, stratified 10% of
--data is held out. Files that cannot be read or decoded are reported, counted and skipped.

Initial weights: --weights takes any file classify loads. When its class count differs from the
data's, the classifier is re-initialized for the data's classes. Without --weights the model is
initialized as torchvision (timm for V1) does, from --seed.

Outputs in --out: model.pth (a plain state_dict with torchvision's or timm's key names:
torch.load(p, weights_only=True) loads it into torchvision.models.mobilenet_v2(num_classes=K)),
checkpoint.pth (model, optimizer, lr_scheduler, epoch, args, as torchvision's reference writes
them; --resume OUT continues from it exactly), model.json and classes.json (classify uses them
from beside model.pth), metrics.jsonl (one row per epoch), curves.png (loss and accuracy per
epoch), model_ema.pth with --ema. With --json, stdout has one metrics row per epoch (and with
--log-every N a {\"event\": \"step\", ...} row every N steps), then {\"done\", \"epochs\",
\"steps\", \"seconds\", \"images_per_s\", \"out\"} (images_per_s: the training loops, data
loading included).

Data-parallel: under `torchrun --no-python --nproc-per-node N mobilenet train ...` each process
is a rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as torchrun sets them) of a c10d
group (Gloo; NCCL for CUDA tensors where built): rank 0's weights at the start and its buffers
before each forward, gradients averaged by
c10d's Reducer (DistributedDataParallel's engine: buckets of --bucket-cap-mb whose all-reduce
overlaps the backward), each rank on its DistributedSampler shard with --batch-size images per
step. With --json, rank 0 prints {\"event\": \"buckets\", \"buckets\": [[names]]} when the
buckets are rebuilt in the backward's order (at the second step). Only rank 0 validates and
writes. A rank that never joins makes the others fail after --dist-timeout; one that stops makes
them fail at their next collective. --sync-bn normalizes every BatchNorm over all ranks'
batches in training (nn.SyncBatchNorm); model.pth keeps BatchNorm2d's keys.

Exit status: 0 done; 2 bad usage, bad data or weights, or a failed step.";

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Architecture [default: the one --weights holds].
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Width multiplier [default: --weights', else 1.0].
    #[arg(long, allow_negative_numbers = true, value_parser = width_mult)]
    width_mult: Option<f64>,
    /// Normalization after each convolution: batch, group:G, layer, instance.
    #[arg(long, default_value = "batch")]
    norm: NormKind,
    /// Dropout before the classifier [default: the architecture's, 0.2].
    #[arg(long, allow_negative_numbers = true)]
    dropout: Option<f64>,
    /// Training image folder (one sub-folder per class).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Validation image folder, with the same classes [default: 10% of --data held out].
    #[arg(long, value_name = "DIR")]
    val: Option<PathBuf>,
    /// Initial weights (any file classify loads).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Classes; must equal the number of class folders [default: that number].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=MAX_CLASSES))]
    num_classes: Option<i64>,
    /// Train the classifier only (the features run in eval mode, their statistics fixed).
    #[arg(long)]
    freeze_features: bool,
    /// Epochs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=100_000),
          conflicts_with = "steps")]
    epochs: i64,
    /// Stop after N optimizer steps instead (the epochs that takes, the last one partial).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=100_000_000))]
    steps: Option<i64>,
    /// Images per step.
    #[arg(long, default_value_t = 32, value_parser = usize_in(BATCH_SIZES))]
    batch_size: usize,
    /// Training and validation crop size.
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(i64).range(RESOLUTIONS))]
    resolution: i64,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerKind,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Momentum (SGD, RMSprop).
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 4e-5)]
    weight_decay: f64,
    /// Weight decay of norm layers' parameters [default: --weight-decay].
    #[arg(long)]
    norm_weight_decay: Option<f64>,
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleKind,
    /// step: epochs between decays.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..))]
    lr_step_size: i64,
    /// step: the decay factor.
    #[arg(long, default_value_t = 0.1)]
    lr_gamma: f64,
    /// cosine: the final learning rate.
    #[arg(long, default_value_t = 0.0)]
    lr_min: f64,
    /// Linear warm-up epochs from --warmup-decay x --lr.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..=100_000))]
    warmup_epochs: i64,
    #[arg(long, default_value_t = 0.01)]
    warmup_decay: f64,
    /// CrossEntropyLoss(label_smoothing=).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    #[arg(long, value_enum, default_value = "standard")]
    augment: Augment,
    /// Take the images in folder order every epoch.
    #[arg(long)]
    no_shuffle: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.9998).
    #[arg(long, value_name = "DECAY")]
    ema: Option<f64>,
    /// auto (CUDA when available; under torchrun cuda:LOCAL_RANK), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// fp32; bf16 or fp16 autocast (fp16 with loss scaling, as torch.amp.GradScaler), as
    /// torchvision's --amp runs it. The weights and the optimizer stay fp32.
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// Decoding threads [default: the number of CPUs, at most 8].
    #[arg(long, value_parser = usize_in(1..=256))]
    workers: Option<usize>,
    /// Intra-op threads [default: libtorch's, one per core].
    #[arg(long, value_parser = clap::value_parser!(i32).range(THREADS))]
    threads: Option<i32>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Under torchrun: how long a collective waits for the other ranks before failing.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    dist_timeout: u64,
    /// Under torchrun: BatchNorm normalizes over every rank's batch in training
    /// (nn.SyncBatchNorm); a no-op in a single process. Needs --norm batch.
    #[arg(long)]
    sync_bn: bool,
    /// Under torchrun: the gradient buckets' size in MiB (DDP's bucket_cap_mb) [default: 25,
    /// and 1 for the first bucket, as DDP's default].
    #[arg(long, value_name = "MB")]
    bucket_cap_mb: Option<f64>,
    /// Debugging aid: every rank writes its own final state_dict (its BatchNorm running
    /// statistics differ without --sync-bn) to DIR/rank<R>.pth.
    #[arg(long, value_name = "DIR")]
    rank_state: Option<PathBuf>,
    /// Continue the run whose checkpoint.pth is in DIR (pass the same arguments).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// One JSON object per epoch on stdout, then a summary line.
    #[arg(long)]
    json: bool,
    /// Every N steps, report the step: with --json a line {"event": "step", "epoch", "step",
    /// "loss", "top1", "elapsed"} on stdout (loss and top1 running over the epoch, elapsed
    /// seconds since training started), else a line on stderr when it is not a terminal
    /// (torchvision's --print-freq). 0: only per epoch.
    #[arg(long, value_name = "N", default_value_t = 0)]
    log_every: u64,
}

#[derive(Serialize)]
struct Summary<'a> {
    done: bool,
    epochs: i64,
    steps: i64,
    seconds: f64,
    images_per_s: f64,
    out: &'a Path,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let device = match (args.device, Dist::local_rank_from_env()?) {
        // Under torchrun, each rank on the GPU of its LOCAL_RANK.
        (DeviceChoice::Auto, Some(local)) if mobilenet::device::cuda_is_available() => {
            DeviceChoice::Cuda(local).resolve()?
        }
        (choice, _) => choice.resolve()?,
    };
    if args.precision == Precision::Bf16 && device == Device::Cpu && !tch::utils::has_mkldnn() {
        bail!(
            "--precision bf16 on the CPU needs libtorch with oneDNN (mkldnn), which this one lacks"
        );
    }
    let (train_set, val_set) = data_sets(&args)?;
    let classes = train_set.classes.clone();
    let num_classes = classes.len() as i64;
    if let Some(k) = args.num_classes {
        if k != num_classes {
            bail!(
                "--num-classes {k} contradicts {}: it has {num_classes} class folders",
                args.data.display()
            );
        }
    }
    check_out(&args)?;
    let model = initial_model(&args, num_classes, device)?;
    let config = model.config().clone();
    let family = config.arch.info().transform;
    let options = TrainOptions {
        epochs: args.epochs,
        steps: args.steps,
        batch_size: args.batch_size,
        resolution: args.resolution,
        optimizer: args.optimizer,
        lr: args.lr,
        momentum: args.momentum,
        nesterov: args.nesterov,
        weight_decay: args.weight_decay,
        norm_weight_decay: args.norm_weight_decay,
        schedule: args.schedule,
        lr_step_size: args.lr_step_size,
        lr_gamma: args.lr_gamma,
        lr_min: args.lr_min,
        warmup_epochs: args.warmup_epochs,
        warmup_decay: args.warmup_decay,
        label_smoothing: args.label_smoothing,
        augment: args.augment,
        shuffle: !args.no_shuffle,
        seed: args.seed,
        ema: args.ema,
        workers: args.workers.unwrap_or_else(default_workers),
        freeze_features: args.freeze_features,
        precision: args.precision,
        mean: family.mean,
        std: family.std,
        sync_bn: args.sync_bn,
        bucket_cap_mb: args.bucket_cap_mb,
    };
    // Under torchrun: this rank's share of each epoch (DistributedSampler's).
    let timeout = std::time::Duration::from_secs(args.dist_timeout);
    let rendezvous = Dist::rendezvous_from_env(timeout)?;
    let world = rendezvous.as_ref().map_or(1, |r| r.world);
    let main = rendezvous.as_ref().is_none_or(|r| r.rank == 0);
    if args.sync_bn && world == 1 && args.norm == NormKind::Batch {
        // As nn.SyncBatchNorm, which runs as BatchNorm2d at a world size of 1.
        eprintln!("train: --sync-bn has no effect in a single process (a world size of 1)");
    }
    let per_rank = train_set.samples.len().div_ceil(world);
    if device == Device::Cpu && !args.freeze_features {
        // What the backward keeps, at least, against what this process may use.
        if let Some(limit) = memory::memory_limit() {
            let element_bytes = if args.precision == Precision::Fp32 {
                4
            } else {
                2
            };
            let batch = args.batch_size.min(per_rank.max(1));
            memory::check_fits(&config, args.resolution, batch, element_bytes, limit)?;
        }
    }
    let batches_per_epoch = per_rank.div_ceil(args.batch_size) as i64;
    let total_epochs = match args.steps {
        Some(s) => (s + batches_per_epoch.max(1) - 1) / batches_per_epoch.max(1),
        None => args.epochs,
    };
    let eval = eval_transform(args.resolution, family.mean, family.std);
    let plain_args = || run_args(&args, &config, &options, &classes);
    let saved_args = plain_args()?;
    let mut trainer = Trainer::new(model, options.clone(), total_epochs)?;
    let mut rows = Vec::new();
    if let Some(dir) = &args.resume {
        rows = resume(&mut trainer, dir, &saved_args)?;
    }
    if let Some(r) = &rendezvous {
        // CUDA tensors through NCCL where this build has it, as `init_process_group`'s default.
        let r = Rendezvous {
            nccl: device.is_cuda() && mobilenet::ffi::has_nccl(),
            ..r.clone()
        };
        trainer = trainer.with_dist(Dist::join(&r)?)?;
    }
    // Only rank 0 writes the outputs and reports (and validates).
    if main {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;
        ModelCard::new(&config, eval).write(&args.out, &classes)?;
    }

    let train = Arc::new(train_set.samples);
    let val = Arc::new(val_set.samples);
    if main && (!args.json || std::io::stderr().is_terminal()) {
        let ranks = if world > 1 {
            format!(", {world} ranks")
        } else {
            String::new()
        };
        eprintln!(
            "train: {} {} width {} norm {}, {num_classes} classes, {} training and {} validation \
             images, {} epoch(s) on {device:?}{ranks}",
            config.arch,
            if args.weights.is_some() {
                "fine-tuned"
            } else {
                "from scratch"
            },
            config.width_mult,
            config.norm,
            train.len(),
            val.len(),
            total_epochs
        );
    }
    let started = Instant::now();
    let mut report = Reporter::new(args.json, total_epochs, args.log_every);
    let validate = main.then_some(&val);
    while !trainer.finished() {
        let metrics = trainer.run_epoch(&train, validate, eval, &mut |p| {
            if main {
                report.on(p)
            }
        })?;
        if main {
            report.epoch_done(&metrics);
            rows.push(metrics);
            write_outputs(&mut trainer, &args.out, &rows, plain_args()?)?;
        }
    }
    if let Some(dir) = &args.rank_state {
        let rank = rendezvous.as_ref().map_or(0, |r| r.rank);
        write_rank_state(&trainer, dir, rank)?;
    }
    if !main {
        return Ok(ExitCode::SUCCESS);
    }
    let summary = Summary {
        done: true,
        epochs: trainer.epoch(),
        steps: trainer.step(),
        seconds: started.elapsed().as_secs_f64(),
        images_per_s: trainer.images_per_s(),
        out: &args.out,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "train: done, {} epoch(s), {} step(s) in {:.1} s; outputs in {}",
            summary.epochs,
            summary.steps,
            summary.seconds,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// The training folder and the validation one (`--val`, or the held-out 10%).
fn data_sets(args: &Args) -> anyhow::Result<(ImageFolder, ImageFolder)> {
    let data = ImageFolder::open(&args.data)?;
    match &args.val {
        Some(dir) => {
            let val = ImageFolder::open(dir)?;
            if val.classes != data.classes {
                bail!(
                    "{}: its classes ({}) are not those of {} ({})",
                    dir.display(),
                    val.classes.join(", "),
                    args.data.display(),
                    data.classes.join(", ")
                );
            }
            Ok((data, val))
        }
        None => Ok(data.split(0.1, args.seed)),
    }
}

/// Refuses to overwrite another run's outputs: `--out` may hold a checkpoint only when it is the
/// folder being resumed.
fn check_out(args: &Args) -> anyhow::Result<()> {
    let ckpt = args.out.join("checkpoint.pth");
    let resuming_here = args
        .resume
        .as_ref()
        .is_some_and(|r| std::fs::canonicalize(r).ok() == std::fs::canonicalize(&args.out).ok());
    if ckpt.exists() && !resuming_here {
        bail!(
            "{} already holds a run (checkpoint.pth): pass --resume {} to continue it, or choose \
             another --out",
            args.out.display(),
            args.out.display()
        );
    }
    Ok(())
}

/// The model to start from: `--weights` (its classifier re-initialized when the class count
/// differs) or the reference initialization from `--seed`.
fn initial_model(args: &Args, num_classes: i64, device: Device) -> anyhow::Result<Model> {
    let sd = args
        .weights
        .as_ref()
        .map(|p| weights::read(p))
        .transpose()?;
    let guess = sd.as_ref().and_then(weights::detect_architecture);
    if let Some(path) = &args.weights {
        check_arch(args.arch, guess.as_ref().map(|g| g.arch), path)?;
    }
    let arch = match (args.arch, &guess) {
        (Some(a), _) => a,
        (None, Some(g)) => g.arch,
        (None, None) if sd.is_some() => bail!(
            "cannot tell the architecture of {}: pass --arch",
            args.weights
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        ),
        (None, None) => bail!("pass --arch (or --weights to fine-tune)"),
    };
    let mut config = ModelConfig {
        num_classes,
        norm: args.norm,
        ..ModelConfig::new(arch)
    };
    config.width_mult = args
        .width_mult
        .or(guess.as_ref().map(|g| g.width_mult))
        .unwrap_or(1.0);
    if let Some(p) = args.dropout {
        config.dropout = p;
    }
    tch::manual_seed(args.seed as i64 & i64::MAX);
    let model = Model::new(config, Device::Cpu)?;
    match (sd, &args.weights) {
        (Some(sd), Some(path)) => load_initial(&model, sd, path)?,
        _ => mobilenet::train::init::reference_init(&model)?,
    }
    let mut model = model;
    model.to(device, Precision::Fp32)?;
    Ok(model)
}

/// Loads `sd` into `model` strictly, except the last classifier layer when its class count
/// differs from the model's: that one keeps its fresh initialization (timm's
/// `reset_classifier`), and a message says so.
fn load_initial(model: &Model, mut sd: StateDict, path: &Path) -> anyhow::Result<()> {
    let last = model
        .network()
        .spec()
        .head
        .last()
        .map(|l| (l.path, l.out))
        .context("the model has no classifier")?;
    let (head_w, head_b) = (format!("{}.weight", last.0), format!("{}.bias", last.0));
    let file_classes = sd.get(&head_w).map(|t| t.size()[0]);
    if let Some(k) = file_classes.filter(|&k| k != last.1) {
        eprintln!(
            "train: {} has {k} classes, the data {}: the classifier ({}) is re-initialized for \
             {} classes",
            path.display(),
            last.1,
            last.0,
            last.1
        );
        // The model's fresh classifier stands in for the file's, so that the load stays strict
        // for every other key.
        let fresh = model.var_store().variables();
        for (name, t) in sd.tensors.iter_mut() {
            if *name == head_w || *name == head_b {
                *t = fresh[name.as_str()].f_detach_copy()?;
            }
        }
    }
    weights::load_into(model.var_store(), &sd, &LoadOptions::default()).with_context(|| {
        format!(
            "the weights do not fit {} width {} with norm {}",
            model.config().arch,
            model.config().width_mult,
            model.config().norm
        )
    })?;
    Ok(())
}

/// The run's arguments as plain values (the checkpoint's `args`; `--resume` compares them).
fn run_args(
    args: &Args,
    config: &ModelConfig,
    options: &TrainOptions,
    classes: &[String],
) -> anyhow::Result<Dict> {
    let mut d = Dict::new();
    d.insert("arch", config.arch.name());
    d.insert("width_mult", Value::Float(config.width_mult));
    d.insert("norm", config.norm.to_string().as_str());
    d.insert("num_classes", Value::Int(config.num_classes));
    d.insert("dropout", Value::Float(config.dropout));
    d.insert("data", args.data.display().to_string().as_str());
    d.insert(
        "classes",
        Value::List(classes.iter().map(|c| Value::Str(c.clone())).collect()),
    );
    if let serde_json::Value::Object(map) = serde_json::to_value(options)? {
        for (k, v) in map {
            d.insert(k.as_str(), json_value(v));
        }
    }
    Ok(d)
}

/// A JSON value as a plain [`Value`].
fn json_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::None,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(json_value).collect()),
        serde_json::Value::Object(o) => Value::Dict(
            o.into_iter()
                .map(|(k, v)| (k.into(), json_value(v)))
                .collect(),
        ),
    }
}

/// The settings that must not change across `--resume` (the others, such as the epoch count or
/// the workers, may).
const FIXED_ON_RESUME: [&str; 12] = [
    "arch",
    "width_mult",
    "norm",
    "num_classes",
    "classes",
    "optimizer",
    "batch_size",
    "resolution",
    "seed",
    "schedule",
    "precision",
    "sync_bn",
];

/// Restores `trainer` from `dir/checkpoint.pth` and returns the metrics rows of the epochs done.
fn resume(trainer: &mut Trainer, dir: &Path, now: &Dict) -> anyhow::Result<Vec<EpochMetrics>> {
    let path = dir.join("checkpoint.pth");
    let ckpt = weights::read_value(&path)?;
    let saved = ckpt
        .as_dict()
        .and_then(|d| d.get("args"))
        .and_then(Value::as_dict)
        .with_context(|| format!("{}: has no args", path.display()))?;
    for key in FIXED_ON_RESUME {
        let (a, b) = (saved.get(key), now.get(key));
        if format!("{a:?}") != format!("{b:?}") {
            bail!(
                "{}: the run had {key} = {}, this one has {}: pass the same arguments to resume",
                path.display(),
                show(a),
                show(b)
            );
        }
    }
    trainer.restore(&ckpt, &path)?;
    let mut rows = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: EpochMetrics = serde_json::from_str(line)
                .with_context(|| format!("{}: a bad line", dir.join("metrics.jsonl").display()))?;
            if row.epoch <= trainer.epoch() {
                rows.push(row);
            }
        }
    }
    eprintln!(
        "train: resumed from {} after epoch {} (step {})",
        path.display(),
        trainer.epoch(),
        trainer.step()
    );
    Ok(rows)
}

fn show(v: Option<&Value>) -> String {
    match v {
        Some(Value::Str(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::Float(f)) => f.to_string(),
        Some(other) => format!("{other:?}"),
        None => "nothing".into(),
    }
}

/// Writes the epoch's outputs, each through a temporary file and a rename.
/// `--rank-state`: this rank's final state_dict as `dir/rank<R>.pth` (model.pth's format).
fn write_rank_state(trainer: &Trainer, dir: &Path, rank: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the --rank-state folder", dir.display()))?;
    let state = trainer.state_dict()?;
    replace_with(&dir.join(format!("rank{rank}.pth")), |p| {
        weights::write_pth(p, &state)
    })?;
    Ok(())
}

fn write_outputs(
    trainer: &mut Trainer,
    out: &Path,
    rows: &[EpochMetrics],
    args: Dict,
) -> anyhow::Result<()> {
    let state = trainer.state_dict()?;
    replace_with(&out.join("model.pth"), |p| weights::write_pth(p, &state))?;
    if let Some(ema) = trainer.ema_state_dict() {
        replace_with(&out.join("model_ema.pth"), |p| weights::write_pth(p, &ema))?;
    }
    let ckpt = trainer.checkpoint(args)?;
    replace_with(&out.join("checkpoint.pth"), |p| {
        weights::write_pth_value(p, &ckpt)
    })?;
    let mut lines = String::new();
    for row in rows {
        lines.push_str(&serde_json::to_string(row)?);
        lines.push('\n');
    }
    write_atomic(&out.join("metrics.jsonl"), lines.as_bytes())?;
    let config = trainer.model().config();
    let title = format!(
        "{} x{} {}, {} classes",
        config.arch, config.width_mult, config.norm, config.num_classes
    );
    mobilenet::train::curves::draw(&out.join("curves.png"), rows, &title)?;
    Ok(())
}

/// Progress: one bar per epoch on a terminal, plain lines otherwise; JSON rows with `--json`.
struct Reporter {
    json: bool,
    total_epochs: i64,
    bar: Option<ProgressBar>,
    interactive: bool,
    /// `--log-every`.
    log_every: u64,
    /// The epoch under way, and when training started.
    epoch: i64,
    started: Instant,
}

/// `row` as one JSON line on stdout, flushed at once (a reader follows the run line by line).
fn json_line(row: &impl Serialize) {
    if let Ok(line) = serde_json::to_string(row) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// `--log-every`'s JSON line.
#[derive(Serialize)]
struct StepRow {
    event: &'static str,
    epoch: i64,
    step: i64,
    loss: f64,
    top1: f64,
    elapsed: f64,
}

impl Reporter {
    fn new(json: bool, total_epochs: i64, log_every: u64) -> Reporter {
        Reporter {
            json,
            total_epochs,
            bar: None,
            interactive: std::io::stderr().is_terminal(),
            log_every,
            epoch: 0,
            started: Instant::now(),
        }
    }

    /// `--log-every`: the step's line, every N steps.
    fn log_step(&self, step: i64, loss: f64, top1: f64) {
        if self.log_every == 0 || step.max(0) as u64 % self.log_every != 0 {
            return;
        }
        let row = StepRow {
            event: "step",
            epoch: self.epoch,
            step,
            loss,
            top1,
            elapsed: self.started.elapsed().as_secs_f64(),
        };
        if self.json {
            json_line(&row);
        } else if !self.interactive {
            eprintln!(
                "epoch {}/{} step {step}: loss {loss:.4} top1 {:.2}% | {:.1} s",
                row.epoch,
                self.total_epochs,
                top1 * 100.0,
                row.elapsed
            );
        }
    }

    fn on(&mut self, p: Progress<'_>) {
        match p {
            Progress::EpochStart { epoch, batches } => {
                self.epoch = epoch;
                if self.interactive {
                    let bar = ProgressBar::with_draw_target(
                        Some(batches as u64),
                        ProgressDrawTarget::stderr(),
                    );
                    bar.set_style(
                        ProgressStyle::with_template(
                            "epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_prefix(format!("{epoch}/{}", self.total_epochs));
                    self.bar = Some(bar);
                }
            }
            Progress::Step { step, loss, top1 } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    bar.set_message(format!("loss {loss:.4} top1 {:.1}%", top1 * 100.0));
                }
                self.log_step(step, loss, top1);
            }
            Progress::Skipped { path, why } => {
                let line = format!("train: skipped {}: {why}", path.display());
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Progress::SingleImageBatch => {
                let line = "train: left out a last batch of one image (BatchNorm cannot \
                            train on one value per channel)";
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Progress::BucketsRebuilt { buckets } => {
                // What TORCH_DISTRIBUTED_DEBUG=INFO logs; in JSON mode only.
                if self.json {
                    json_line(&serde_json::json!({"event": "buckets", "buckets": buckets}));
                }
            }
        }
    }

    fn epoch_done(&mut self, m: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.json {
            json_line(m);
            if !self.interactive {
                return;
            }
        }
        let val = match (m.val_loss, m.val_top1, m.val_top5) {
            (Some(l), Some(t1), Some(t5)) => format!(
                " | val loss {l:.4} top1 {:.2}% top5 {:.2}%",
                t1 * 100.0,
                t5 * 100.0
            ),
            _ => String::new(),
        };
        eprintln!(
            "epoch {}/{}: lr {:.6} train loss {:.4} top1 {:.2}%{val} | {:.1} img/s, {:.1} s, {} \
             skipped",
            m.epoch,
            self.total_epochs,
            m.lr,
            m.train_loss,
            m.train_top1 * 100.0,
            m.images_per_s,
            m.seconds,
            m.skipped_files
        );
    }
}
