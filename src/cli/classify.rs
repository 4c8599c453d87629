//! `mobilenet classify`: the top-k classes of image files and folders (ImageNet's, or those of the
//! model card beside the weights that `mobilenet train` writes, [`mobilenet::card`]).
//!
//! Streamed, in one of two ways; either way memory stays bounded however many files there are,
//! and results are printed in input order as each batch finishes:
//! - By default with the direct oneDNN engine on the CPU (fp32, PIL's path): each of the model's
//!   threads takes the next image, decodes and preprocesses it and runs it through its own
//!   one-image trunk ([`mobilenet::ffi::Lanes`]); the batch meets only in the classifier. No
//!   second set of threads competes for the cores, and an image stays in its core's cache.
//! - Otherwise (or with `--workers N`): worker threads decode and preprocess the images (PIL's
//!   path, [`mobilenet::preprocess::PilTransform`], on `uint8` buffers; the tensor path off the
//!   CPU is preprocessed on the model's device) while the model runs on earlier batches of the
//!   final float tensors ([`mobilenet::pipeline::ordered_map`]).
//!
//! Both give the same bytes. `--timings` reports the time of each stage.
//!
//! Sharded batch inference ([`mobilenet::shard`]): `--shard K/N|auto` takes one slice of the
//! inputs, `--output FILE` writes JSON Lines atomically, `--resume` continues a killed run.

use super::common::{check_arch, BATCH_SIZES, MAX_CLASSES, THREADS};
use super::without_backtrace;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mobilenet::card::{self, ModelCard};
use mobilenet::device::{DeviceChoice, Placement, Precision};
use mobilenet::error::escape;
use mobilenet::images::{self, Input};
use mobilenet::models::{Arch, Model, ModelConfig};
use mobilenet::pipeline::ordered_map;
use mobilenet::preprocess::{self, PilTransform, Transform};
use mobilenet::shard::output::{JsonLinesFile, Recorded};
use mobilenet::shard::{Shard, ShardSpec};
use mobilenet::{imagenet, weights};
use serde::Serialize;
use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const AFTER_HELP: &str = "\
Inputs: image files (JPEG, PNG, WebP, BMP, TIFF; the format is read from the content) and
folders, searched recursively for .jpg .jpeg .png .webp .bmp .tif .tiff files, each folder in
sorted order. Pixels are taken as PIL's Image.open(path).convert(\"RGB\") gives them: alpha is
dropped (not composited), grayscale and palettes become RGB, EXIF orientation is ignored (as in
torchvision's reference pipeline).

Preprocessing is the weights' own evaluation transform: torchvision's ImageClassification
(shorter side resized to 232 or 256 with antialiased bilinear, center crop 224, ImageNet
mean/std) or timm's (bicubic, crop_pct, mean = std = 0.5), picked from the weight file's name
when it is a published one, else from the architecture's default weights. --resize/--crop
override the sizes. By default (--preprocess pil) it runs as on a PIL image, the way
`weights.transforms()(Image.open(p).convert(\"RGB\"))`, torchvision's reference evaluation and
published accuracies run it: Pillow's fixed-point resampler, bit for bit. --preprocess tensor
runs torchvision's tensor path instead (float resize, as `weights.transforms()` of
`torchvision.io.decode_image(p)`), on the model's device. --fast-decode lets the JPEG decoder
downscale in the DCT domain (PIL's Image.draft) to at least the resize size: faster on large
photos, not exact.

Model card: when the weight file's folder holds a model.json (as `mobilenet train --out DIR`
writes beside DIR/model.pth), it gives the architecture, width, norm, class count and the
evaluation transform (--arch must agree with it; --resize/--crop still override), and the labels
come from classes.json beside it (\"class N\" without one). Without a card, the class count is
the file's; labels are ImageNet's for 1000 classes, else \"class N\". A model.json or
classes.json that is there but unreadable or wrong is an error (exit 2).

Output: per image a table (rank, class index, probability, label) on stdout, or with --json one
JSON object per input line: {\"path\": ..., \"top\": [{\"index\", \"label\", \"probability\"}, ...]}
or {\"path\": ..., \"error\": ...}. Results come in input order.

Sharded batch inference: --shard K/N (0 <= K < N) classifies only the inputs of shard K: those
whose key hashes to it, the key being the input's path relative to the folder argument it was
found under (a file argument: its path as given), the hash 64-bit FNV-1a of the key's bytes,
the shard floor(hash * N / 2^64). A file's shard depends on its key alone: adding files elsewhere
in the tree moves no file to another shard, and the N shards together hold every input once.
Within a shard the inputs keep their order. Merged, the shards' lines equal one process's byte
for byte with --batch-size 1; at larger batch sizes an image's probabilities depend on its batch
in the last digits (about 1e-6). --shard auto reads the shard from the environment:
a Kubernetes Indexed Job's JOB_COMPLETION_INDEX, with MOBILENET_SHARDS set to the Job's
.spec.completions (docs/k8s-indexed-job.yaml), or a Slurm array's SLURM_ARRAY_TASK_ID,
SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_STEP (docs/slurm-classify.sbatch);
neither set is an error (exit 2).

--output FILE writes the JSON Lines (as --json prints them) to FILE instead of stdout; failed
inputs are also reported on stderr. The lines go to FILE.partial as each batch finishes; at the
end they are written, one line per path, to FILE.tmp, which is renamed over FILE, and
FILE.partial is removed: FILE is never seen half-written. Without --resume an old FILE.partial
is emptied first. With --resume, the inputs that FILE or FILE.partial already has a line for
(result or error; paths compared as written, so resume with the same arguments) are skipped, a
last line cut short by a kill is dropped, new lines are appended to FILE.partial, and the new
FILE holds the old lines, then the new, no path twice. A line that is not a classify result is
an error (exit 2). Rerunning a finished job with --resume classifies nothing (FILE is rewritten
with the same lines). To retry failed inputs, delete their lines from FILE first.

Exit status: 0 every input was classified; 1 some inputs could not be read or decoded (each is
reported, with --json as an error line, else on stderr, and every other input is still
classified; with --resume, the error lines kept from FILE for this shard's inputs count too);
2 bad usage, no inputs, or weights that cannot be loaded.";

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Image files and folders.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Architecture [default: the model card's, else the one the weight file holds;
    /// mobilenet_v2 without --weights].
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Weight file (torch .pth zip or legacy, .safetensors, .ot) [default: the published
    /// weights of --arch under weights/, e.g. weights/mobilenet_v2-7ebf99e0.pth].
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Precision of the model (fp16 is CUDA only).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// How many classes to report per image (at most 100000).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=MAX_CLASSES))]
    top_k: i64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(BATCH_SIZES))]
    batch_size: u32,
    /// Resize the shorter side to N before cropping [default: the weights' own].
    #[arg(long, value_name = "N")]
    resize: Option<i64>,
    /// Center crop N x N [default: the weights' own, 224].
    #[arg(long, value_name = "N")]
    crop: Option<i64>,
    /// Decoding threads, beside the model's [default: none; with the direct oneDNN engine on
    /// the CPU in fp32 and PIL's path, each of the model's threads decodes its own images;
    /// else the number of CPUs, at most 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: Option<u32>,
    /// On the CPU: compile the forward with libtorch's oneDNN Graph fuser instead of the
    /// direct oneDNN engine (about 0.2 s of compiling per batch shape, on its second batch;
    /// the first batch of each shape runs uncompiled).
    #[arg(long)]
    graph: bool,
    /// On the CPU: run the layers one by one through libtorch (oneDNN's fused convolution)
    /// instead of the default direct oneDNN engine (the whole forward as oneDNN calls, see
    /// `Model::compile_engine`; BatchNorm, fp32, and bf16 on CPUs with avx512_bf16 or AMX).
    /// fp32 probabilities differ by about 1e-6.
    #[arg(long)]
    no_engine: bool,
    /// Intra-op threads of the forward pass [default: libtorch's, one per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(THREADS))]
    threads: Option<i32>,
    /// One JSON object per input per line instead of tables.
    #[arg(long)]
    json: bool,
    /// Classify only shard K of N of the inputs (0 <= K < N), or `auto`: the shard of this
    /// Kubernetes Indexed Job pod or Slurm array task (see below).
    #[arg(long, value_name = "K/N|auto")]
    shard: Option<ShardSpec>,
    /// Write the results as JSON Lines to FILE, atomically, instead of to stdout (see below).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// With --output: skip the inputs FILE (or the FILE.partial of a killed run) already holds,
    /// keeping their lines.
    #[arg(long, requires = "output")]
    resume: bool,
    /// How images are preprocessed: `pil`, bit for bit as the weights' transforms on a PIL
    /// image; `tensor`, as they run on a uint8 tensor (see below).
    #[arg(long, value_enum, default_value = "pil")]
    preprocess: Preprocess,
    /// Let the JPEG decoder downscale large images to at least the resize size (PIL's
    /// Image.draft): faster, NOT exact.
    #[arg(long)]
    fast_decode: bool,
    /// Print the time of each stage (decode, resize, model) to stderr at the end, as one line
    /// `classify: timings {JSON}`.
    #[arg(long)]
    timings: bool,
    /// Print the process's peak resident memory (VmHWM) to stderr at the end (for tests).
    #[arg(long, hide = true)]
    report_peak_rss: bool,
}

/// Which implementation of the evaluation transform runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Preprocess {
    /// As on a PIL image ([`PilTransform`]): the default.
    Pil,
    /// torchvision's tensor path ([`Transform::apply`]).
    Tensor,
}

/// One JSON Lines record.
#[derive(Serialize)]
#[serde(untagged)]
enum Record<'a> {
    Top { path: String, top: &'a [Class] },
    Error { path: String, error: &'a str },
}

#[derive(Serialize, Debug, Clone)]
struct Class {
    index: i64,
    label: String,
    probability: f32,
}

/// The names classes are printed with.
enum Labels {
    /// `classes.json`'s, one per class.
    Named(Vec<String>),
    /// torchvision's ImageNet labels (a 1000-class model without a card).
    ImageNet,
    /// `class N`.
    Numbered,
}

impl Labels {
    fn label(&self, index: i64) -> String {
        let name = match self {
            Labels::Named(names) => usize::try_from(index)
                .ok()
                .and_then(|i| names.get(i))
                .map(String::as_str),
            Labels::ImageNet => imagenet::label(index),
            Labels::Numbered => None,
        };
        name.map_or_else(|| format!("class {index}"), str::to_string)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let shard = args
        .shard
        .map(|spec| spec.resolve(|name| std::env::var(name).ok()))
        .transpose()?;
    let device = resolve_device(&args)?;
    let (weights_path, state_dict) = read_weights(&args)?;
    let Setup {
        config,
        transform,
        transform_source,
        labels,
        card,
    } = setup(&args, &weights_path, &state_dict)?;
    let (out, recorded) = open_output(&args)?;
    let (inputs, total) = find_inputs(&args.paths, shard.map_or(Shard::ALL, |(s, _)| s))?;
    let (inputs, kept) = skip_recorded(inputs, &recorded);
    if let Some((shard, source)) = shard {
        eprintln!(
            "classify: shard {shard} (from {source}): {} of {total} input(s)",
            inputs.len() + kept.total
        );
    }
    if let (true, Some(file)) = (args.resume, &args.output) {
        eprintln!(
            "classify: resuming {}: {} input(s) done, {} to go",
            file.display(),
            kept.total,
            inputs.len()
        );
    }
    let model = prepare_model(
        &args,
        &config,
        card.as_deref(),
        state_dict,
        &weights_path,
        device,
    )?;
    if std::io::stderr().is_terminal() {
        eprintln!(
            "classify: {} input(s); {} width {} from {}; {device:?} {}; {transform} ({transform_source}), {:?} path{}",
            inputs.len(),
            config.arch,
            config.width_mult,
            weights_path.display(),
            args.precision,
            args.preprocess,
            if args.fast_decode { ", fast decode" } else { "" },
        );
    }
    let num_classes = config.num_classes;
    let report = Report {
        json: args.json || args.output.is_some(),
        errors_to_stderr: !args.json || args.output.is_some(),
        destination: out.name(),
        out,
        bar: None,
        labels,
        failed: kept.failed,
        total: kept.total,
    };
    let (report, completed) = classify_inputs(
        &args,
        &model,
        num_classes,
        report,
        device,
        transform,
        inputs,
    )?;
    if !completed {
        return Ok(report.exit_code());
    }
    finish(&args, report)
}

/// Where the results go: stdout, or `--output`'s file, with the records it holds already when
/// `--resume`d.
fn open_output(args: &Args) -> anyhow::Result<(Sink, Recorded)> {
    Ok(match (&args.output, args.resume) {
        (None, _) => (Sink::Stdout(std::io::stdout().lock()), Recorded::new()),
        (Some(path), false) => (Sink::File(JsonLinesFile::create(path)?), Recorded::new()),
        (Some(path), true) => {
            let (file, recorded) = JsonLinesFile::resume(path)?;
            (Sink::File(file), recorded)
        }
    })
}

/// Inputs whose results are kept from a resumed `--output` file.
#[derive(Default)]
struct Kept {
    total: usize,
    failed: usize,
}

/// `inputs` without those `recorded` has a line for (by the path as shown), and how many those
/// were.
fn skip_recorded(inputs: Vec<Input>, recorded: &Recorded) -> (Vec<Input>, Kept) {
    let mut kept = Kept::default();
    if recorded.is_empty() {
        return (inputs, kept);
    }
    let todo = inputs
        .into_iter()
        .filter(
            |input| match recorded.get(&input.path().display().to_string()) {
                Some(&failed) => {
                    kept.total += 1;
                    kept.failed += failed as usize;
                    false
                }
                None => true,
            },
        )
        .collect();
    (todo, kept)
}

/// `--threads`, `--device` and whether `--precision` runs there.
fn resolve_device(args: &Args) -> anyhow::Result<Device> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let device = args.device.resolve()?;
    args.precision.check(device)?;
    Ok(device)
}

/// `--weights`, or the published weights of `--arch` (mobilenet_v2 without it), read once.
fn read_weights(args: &Args) -> anyhow::Result<(PathBuf, weights::StateDict)> {
    let path = match &args.weights {
        Some(path) => path.clone(),
        None => default_weights_path(args.arch.unwrap_or(Arch::MobilenetV2))?,
    };
    let state_dict = weights::read(&path)?;
    Ok((path, state_dict))
}

/// How the weights are run: as what model, with which evaluation transform (`--resize` and
/// `--crop` applied) from where, and with which class names.
struct Setup {
    config: ModelConfig,
    transform: Transform,
    transform_source: String,
    labels: Labels,
    /// The model card the model and transform come from, if any.
    card: Option<PathBuf>,
}

/// The [`Setup`] of the weights at `weights_path`: the model card's beside them, else what the
/// file holds (and its name says) with `--arch`.
fn setup(args: &Args, weights_path: &Path, sd: &weights::StateDict) -> anyhow::Result<Setup> {
    let mut setup = match ModelCard::beside(weights_path)? {
        Some((card, classes)) => {
            let card_path = card::beside(weights_path, card::MODEL_CARD);
            Setup {
                config: card_config(args.arch, &card, &card_path)?,
                transform: card.transform,
                transform_source: card_path.display().to_string(),
                labels: classes.map_or(Labels::Numbered, Labels::Named),
                card: Some(card_path),
            }
        }
        None => {
            let config = model_config(args.arch, sd, weights_path)?;
            let (transform, transform_source) =
                preprocess::transform_for(config.arch, config.width_mult, Some(weights_path));
            let labels = match config.num_classes == imagenet::NUM_CLASSES as i64 {
                true => Labels::ImageNet,
                false => Labels::Numbered,
            };
            Setup {
                config,
                transform,
                transform_source,
                labels,
                card: None,
            }
        }
    };
    let transform = &mut setup.transform;
    transform.resize = args.resize.unwrap_or(transform.resize);
    transform.crop = args.crop.unwrap_or(transform.crop);
    transform.validate()?;
    Ok(setup)
}

/// The image files under `paths` in `shard`, and how many there are in all; an error when there
/// are none in all.
fn find_inputs(paths: &[PathBuf], shard: Shard) -> anyhow::Result<(Vec<Input>, usize)> {
    let (inputs, total) = shard.find_images(paths);
    if total == 0 {
        bail!(
            "no image files found in {} (folders are searched for {})",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            images::EXTENSIONS.map(|e| format!(".{e}")).join(" ")
        );
    }
    Ok((inputs, total))
}

/// The model, loaded, folded in fp32 and cast (folding from rounded parameters would not match
/// PyTorch's reduced-precision numbers), then tuned for inference on `device`: channels-last
/// (the faster layout on the CPU, measured, see the README, and for cuDNN); on the CPU in fp32
/// (and in bf16 where the CPU computes in bf16) the direct oneDNN engine
/// ([`Model::compile_engine`]; with `--no-engine` oneDNN's fused kernel,
/// [`Model::accelerate`]; with `--graph` the compiled graph), and glibc keeping freed
/// activations for the next batch; on CUDA cuDNN's fastest algorithms per shape.
fn prepare_model(
    args: &Args,
    config: &ModelConfig,
    card: Option<&Path>,
    state_dict: weights::StateDict,
    weights_path: &Path,
    device: Device,
) -> anyhow::Result<Model> {
    let placement = Placement {
        device,
        precision: args.precision,
        fold: true,
    };
    // The load error names the file; this says what it was loaded into, and who said so.
    let does_not_fit = || {
        let said = card.map_or_else(String::new, |c| format!(" (as {} says)", c.display()));
        format!(
            "the weights do not fit {} width {} with {} classes{said}",
            config.arch, config.width_mult, config.num_classes
        )
    };
    let mut model = Model::from_state_dict(config.clone(), &state_dict, weights_path, &placement)
        .with_context(does_not_fit)?;
    drop(state_dict);
    model.set_channels_last(true)?;
    model.accelerate()?;
    if args.graph {
        // The fuser is process-wide; this process runs only our graph.
        mobilenet::ffi::enable_onednn_fusion(true);
        model.compile_graph()?;
    } else if !args.no_engine {
        // Where it applies (CPU, BatchNorm, fp32 or native bf16); else the fused kernel runs.
        super::common::compile_engine("classify", &mut model)?;
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    } else {
        mobilenet::alloc::keep_freed_memory();
    }
    Ok(model)
}

/// Streams `inputs` through decoding workers and the model in batches, printing each result in
/// input order to `report`. Stops early when stdout is closed: then the flag returned is false.
fn classify_inputs(
    args: &Args,
    model: &Model,
    num_classes: i64,
    mut report: Report<Sink>,
    device: Device,
    transform: Transform,
    inputs: Vec<Input>,
) -> anyhow::Result<(Report<Sink>, bool)> {
    let _no_grad = tch::no_grad_guard();
    let batch_size = args.batch_size as usize;
    let workers = args.workers.map_or_else(default_workers, |n| n as usize);
    let interactive = std::io::stderr().is_terminal();
    report.bar = (interactive && inputs.len() > batch_size).then(|| progress_bar(inputs.len()));

    let paths: Vec<PathBuf> = inputs.iter().map(|i| i.path().to_path_buf()).collect();
    // The workers preprocess PIL's path anywhere and the tensor path on the CPU; elsewhere they
    // decode and the model's device preprocesses.
    let prep = match (args.preprocess, device) {
        (Preprocess::Pil, _) => Prep::Pil(PilTransform::new(transform)?),
        (Preprocess::Tensor, Device::Cpu) => Prep::Tensor(transform),
        (Preprocess::Tensor, _) => Prep::OnDevice,
    };
    let on_device_prep = matches!(prep, Prep::OnDevice);
    let draft = args
        .fast_decode
        .then(|| u32::try_from(transform.resize).unwrap_or(u32::MAX));
    let window = batch_size.max(4 * workers);
    let started = Instant::now();
    // With the engine on the CPU in fp32, PIL's path and no --workers: each of the model's
    // threads decodes, preprocesses and runs the trunk for its own images, one at a time (see
    // `lane_stream`); the batches then only meet in the head. (A bf16 engine would round the
    // input itself, where the batched path gives it bf16 images.)
    // One lane per thread, no more than there are inputs; if they cannot be built (memory),
    // the batched path runs instead.
    let fp32 = args.precision == Precision::Fp32;
    let lanes = match (&prep, device, args.workers, model.engine()) {
        (Prep::Pil(_), Device::Cpu, None, Some(engine)) if fp32 && !inputs.is_empty() => {
            let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
            let count = threads.min(inputs.len());
            engine
                .lanes(count, transform.crop, transform.crop)
                .unwrap_or_else(|e| {
                    eprintln!("classify: warning: {e}; the model runs whole batches instead");
                    None
                })
        }
        _ => None,
    };
    let lanes = lanes.as_ref();
    let classifier = BatchClassifier {
        lanes,
        model,
        device,
        kind: args.precision.kind(),
        k: args.top_k.min(num_classes),
        crop: transform.crop,
        model_time: Cell::default(),
        batches: Cell::default(),
        images: Cell::default(),
    };
    let run = |stream: &mut dyn Iterator<Item = Loaded>| {
        consume(
            args,
            &classifier,
            report,
            paths,
            stream,
            (on_device_prep, device, &transform),
        )
    };
    let (report, completed, totals, workers) = match lanes {
        Some(lanes) => {
            let workers = lanes.take();
            let count = workers.len();
            // The head runs here, between the lanes' images: on this thread alone (for the
            // rest of the process, which ends after the results).
            mobilenet::ffi::serial_thread();
            std::thread::scope(|scope| {
                let mut stream = lane_stream(
                    scope,
                    inputs,
                    workers,
                    (&prep, draft),
                    window,
                    lanes.channels(),
                );
                let (report, completed, totals) = run(&mut stream)?;
                anyhow::Ok((report, completed, totals, count))
            })?
        }
        None => {
            let mut stream = ordered_map(inputs, workers, window, move |input| {
                let mut times = StageTimes::default();
                let loaded = load(input, &prep, draft, &mut times);
                (loaded, times)
            });
            let (report, completed, totals) = run(&mut stream)?;
            (report, completed, totals, workers)
        }
    };
    if completed && args.timings {
        let path = if lanes.is_some() { "lanes" } else { "workers" };
        print_timings(&classifier, totals, (path, workers), started.elapsed());
    }
    Ok((report, completed))
}

/// What a worker hands over for one input: the prepared image or why not, and the time of
/// each stage; `None` when the worker crashed on it.
type Loaded = Option<(Result<Ready, String>, StageTimes)>;

/// Runs `stream` (one item per path of `paths`, in order) through the model in batches,
/// printing each result in order to `report`: the report, whether it completed (false when
/// stdout closed), and the stages' total times.
fn consume(
    args: &Args,
    classifier: &BatchClassifier,
    mut report: Report<Sink>,
    paths: Vec<PathBuf>,
    stream: &mut dyn Iterator<Item = Loaded>,
    (on_device_prep, device, transform): (bool, Device, &Transform),
) -> anyhow::Result<(Report<Sink>, bool, StageTimes)> {
    let batch_size = args.batch_size as usize;
    let mut totals = StageTimes::default();
    let mut pending: Vec<(PathBuf, Result<Ready, String>)> = Vec::new();
    let mut ready = 0;
    for (path, loaded) in paths.into_iter().zip(stream) {
        let entry = match loaded {
            Some((Ok(image), times)) => {
                totals.decode += times.decode;
                totals.resize += times.resize;
                totals.forward += times.forward;
                match (on_device_prep, image) {
                    (true, Ready::Tensor(image)) => {
                        let start = Instant::now();
                        let x = on_device(&image, device, transform);
                        totals.resize += start.elapsed();
                        x.map(Ready::Tensor)
                    }
                    (_, image) => Ok(image),
                }
            }
            Some((Err(reason), _)) => Err(reason),
            None => Err("internal error: the thread that prepared this input crashed".into()),
        };
        ready += entry.is_ok() as usize;
        pending.push((path, entry));
        // Errors alone are printed at once; otherwise wait for a full batch.
        if ready == batch_size || ready == 0 {
            if !report.flush(classifier, &mut pending)? {
                return Ok((report, false, totals));
            }
            ready = 0;
        }
    }
    let completed = report.flush(classifier, &mut pending)?;
    Ok((report, completed, totals))
}

/// The loaded inputs, in order, from one thread per lane: each takes the next input, decodes
/// and preprocesses it (PIL's path) and runs it through its lane's trunk, so that the images
/// reach the head as pooled features ([`Ready::Features`]). With the threads doing every stage
/// of their own images there is no second set of threads to share the cores with, and an
/// image's activations stay in its core's cache. The threads take an input only while fewer
/// than `window` of those taken wait for the consumer, so memory stays bounded whatever one
/// slow image holds up; dropping the iterator stops the threads after the image they hold.
fn lane_stream<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    inputs: Vec<Input>,
    lanes: Vec<mobilenet::ffi::Lane<'s>>,
    (prep, draft): (&'s Prep, Option<u32>),
    window: usize,
    channels: usize,
) -> impl Iterator<Item = Loaded> + 's {
    let total = inputs.len();
    let window = window.max(1);
    let gate = std::sync::Arc::new(Gate::new(inputs));
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Loaded)>(window);
    for mut lane in lanes {
        let (gate, tx) = (std::sync::Arc::clone(&gate), tx.clone());
        scope.spawn(move || {
            // The lane's trunk runs on this thread alone; so do libtorch's ops here.
            mobilenet::ffi::serial_thread();
            let mut x = Vec::new();
            while let Some((i, input)) = gate.take(window) {
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut times = StageTimes::default();
                    let ready = load(input, prep, draft, &mut times).and_then(|image| {
                        through_lane(image, &mut lane, &mut x, channels, &mut times)
                    });
                    (ready, times)
                }))
                .ok();
                if tx.send((i, loaded)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let stop = StopOnDrop(gate);
    let mut waiting = std::collections::BTreeMap::new();
    let mut next = 0;
    std::iter::from_fn(move || {
        if next == total {
            return None;
        }
        // The input `next` was taken (taken >= consumed): its result comes, and the channel
        // never stays full while this drains it.
        while !waiting.contains_key(&next) {
            match rx.recv() {
                Ok((i, loaded)) => {
                    waiting.insert(i, loaded);
                }
                // Every thread ended without this input: one crashed outside an image.
                Err(_) => break,
            }
        }
        let loaded = waiting.remove(&next).flatten();
        next += 1;
        stop.0.consumed(next);
        Some(loaded)
    })
}

/// Hands [`lane_stream`]'s inputs out in order, at most `window` ahead of the consumer.
struct Gate {
    state: std::sync::Mutex<GateState>,
    turn: std::sync::Condvar,
}

struct GateState {
    inputs: std::vec::IntoIter<Input>,
    /// Inputs handed out (the next one's index), and results handed to the consumer.
    taken: usize,
    consumed: usize,
    /// The consumer is gone.
    stopped: bool,
}

impl Gate {
    fn new(inputs: Vec<Input>) -> Gate {
        Gate {
            state: std::sync::Mutex::new(GateState {
                inputs: inputs.into_iter(),
                taken: 0,
                consumed: 0,
                stopped: false,
            }),
            turn: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next input once fewer than `window` taken ones wait; `None` when there are no more
    /// or the consumer is gone.
    fn take(&self, window: usize) -> Option<(usize, Input)> {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return None;
            }
            if state.taken < state.consumed + window {
                let input = state.inputs.next()?;
                state.taken += 1;
                return Some((state.taken - 1, input));
            }
            state = self
                .turn
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn consumed(&self, count: usize) {
        self.lock().consumed = count;
        self.turn.notify_all();
    }
}

/// Stops the gate's threads when the consumer drops the stream.
struct StopOnDrop(std::sync::Arc<Gate>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.turn.notify_all();
    }
}

/// PIL's values of one image (`[S, S, 3]`) through `lane`'s trunk, by way of the planar copy
/// `x`: its pooled features.
fn through_lane(
    image: Ready,
    lane: &mut mobilenet::ffi::Lane<'_>,
    x: &mut Vec<f32>,
    channels: usize,
    times: &mut StageTimes,
) -> Result<Ready, String> {
    let Ready::Floats(hwc) = image else {
        return Ok(image);
    };
    let start = Instant::now();
    let plane = hwc.len() / 3;
    x.resize(hwc.len(), 0.0);
    for (p, rgb) in hwc.chunks_exact(3).enumerate() {
        x[p] = rgb[0];
        x[plane + p] = rgb[1];
        x[2 * plane + p] = rgb[2];
    }
    let mut pooled = vec![0.0; channels];
    lane.run(x, &mut pooled)
        .map_err(|e| format!("inference failed: {e:#}"))?;
    times.forward = start.elapsed();
    Ok(Ready::Features(pooled))
}

/// `classify: timings {JSON}`: images through the model, wall time from the first decode to the
/// last result, the path (`lanes` or `workers`) and its thread count, and per image the decode
/// and resize times (summed over the threads) and the model's: with workers, the batched
/// forward with the softmax and top-k; in lanes, the one-image trunks summed over the lanes
/// plus the classifier, softmax and top-k per batch.
fn print_timings(
    classifier: &BatchClassifier,
    totals: StageTimes,
    (path, workers): (&str, usize),
    wall: Duration,
) {
    let images = classifier.images.get();
    let per_image = |d: Duration| d.as_secs_f64() * 1e3 / images.max(1) as f64;
    let timings = serde_json::json!({
        "images": images,
        "seconds": wall.as_secs_f64(),
        "images_per_second": images as f64 / wall.as_secs_f64(),
        "path": path,
        "workers": workers,
        "decode_ms_per_image": per_image(totals.decode),
        "resize_ms_per_image": per_image(totals.resize),
        "model_ms_per_image": per_image(classifier.model_time.get() + totals.forward),
        "batches": classifier.batches.get(),
    });
    eprintln!("classify: timings {timings}");
}

/// Clears the progress bar, moves `--output`'s file into place, says how many inputs failed and
/// (hidden flag) the peak memory; the exit code.
fn finish(args: &Args, report: Report<Sink>) -> anyhow::Result<ExitCode> {
    if let Some(bar) = &report.bar {
        bar.finish_and_clear();
    }
    let code = report.exit_code();
    if report.failed > 0 {
        eprintln!(
            "classify: {} of {} input(s) failed",
            report.failed, report.total
        );
    }
    if args.report_peak_rss {
        match peak_rss_kib() {
            Some(kib) => eprintln!("peak_rss_kib={kib}"),
            None => eprintln!("peak_rss_kib=unknown"),
        }
    }
    if let Sink::File(file) = report.out {
        file.finish()?;
    }
    Ok(code)
}

/// The model configuration the card at `card_path` describes; `--arch`, if given, must agree.
fn card_config(
    arch: Option<Arch>,
    card: &ModelCard,
    card_path: &Path,
) -> anyhow::Result<ModelConfig> {
    let config = card
        .config()
        .with_context(|| card_path.display().to_string())?;
    if let Some(asked) = arch.filter(|&asked| asked != config.arch) {
        bail!(
            "{}: the model card says {}, not {asked}; leave --arch out (or pass --arch {})",
            card_path.display(),
            config.arch,
            config.arch
        );
    }
    if config.num_classes > MAX_CLASSES {
        bail!(
            "{}: {} classes, more than the {MAX_CLASSES} classify takes",
            card_path.display(),
            config.num_classes
        );
    }
    Ok(config)
}

/// The model configuration for `path`: `--arch` if given (and the file does not hold another
/// architecture), else the architecture the file holds; width and classes from the file.
fn model_config(
    arch: Option<Arch>,
    sd: &weights::StateDict,
    path: &Path,
) -> anyhow::Result<ModelConfig> {
    let held = weights::detect_architecture(sd).and_then(|g| ModelConfig::from_guess(&g));
    check_arch(arch, held.as_ref().map(|h| h.arch), path)?;
    Ok(match (arch, held) {
        (_, Some(held)) => held,
        (Some(asked), None) => ModelConfig::new(asked),
        // Unrecognized: the loader will say which keys do not match.
        (None, None) => ModelConfig::new(Arch::MobilenetV2),
    })
}

/// The published weights of `arch` under `weights/` (the current folder's, then this source
/// tree's), or an error saying how to get them.
fn default_weights_path(arch: Arch) -> anyhow::Result<PathBuf> {
    let Some(known) = arch.default_weights(1.0) else {
        bail!("there are no published weights for {arch}; pass --weights FILE");
    };
    let candidates = [
        Path::new("weights").join(known.file),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("weights")
            .join(known.file),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "the default weights for {arch}, {} ({}), are missing (looked for {} and {}). \
         Download them with `make weights` on a machine with internet access (it runs \
         `.venv/bin/python3 weights/export.py pretrained`) and copy them into weights/, or pass \
         --weights FILE",
        known.file,
        known.name,
        candidates[0].display(),
        candidates[1].display(),
    )
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
}

/// A preprocessed image, as the workers hand it over.
enum Ready {
    /// PIL's path: the `float32 [S, S, 3]` values (channels last), batched with one copy.
    Floats(Vec<f32>),
    /// The tensor path: `float32 [3, S, S]`.
    Tensor(Tensor),
    /// Through the trunk already ([`lane_stream`]): the pooled features.
    Features(Vec<f32>),
}

/// What the workers do to each decoded image.
enum Prep {
    /// PIL's path, to the model's input.
    Pil(PilTransform),
    /// torchvision's tensor path on the CPU, to the model's input.
    Tensor(Transform),
    /// Nothing: the image goes as `uint8 [3, H, W]` to the model's device, which preprocesses.
    OnDevice,
}

/// The time one input spent in each stage.
#[derive(Default, Clone, Copy)]
struct StageTimes {
    decode: Duration,
    resize: Duration,
    /// The trunk, where a lane runs it ([`lane_stream`]).
    forward: Duration,
}

/// Reads and decodes one input (with `draft`, letting the decoder downscale to at least
/// `draft` x `draft`), then prepares it as `prep` says; `times` gets each stage's time.
fn load(
    input: Input,
    prep: &Prep,
    draft: Option<u32>,
    times: &mut StageTimes,
) -> Result<Ready, String> {
    let path = match input {
        Input::Image(path) => path,
        Input::Unreadable { reason, .. } => return Err(reason),
    };
    let start = Instant::now();
    let image = match draft {
        Some(size) => images::read_and_decode_draft(&path, size, size)?,
        None => images::read_and_decode(&path)?,
    };
    times.decode = start.elapsed();
    let start = Instant::now();
    let ready = match prep {
        Prep::Pil(pil) => pil
            .resize_crop(&image)
            .map(|cropped| Ready::Floats(pil.to_floats(&cropped)))
            .map_err(cannot_preprocess),
        Prep::Tensor(t) => to_tensor(&image)
            .and_then(|x| t.apply(&x).map_err(cannot_preprocess))
            .map(Ready::Tensor),
        Prep::OnDevice => to_tensor(&image).map(Ready::Tensor),
    };
    times.resize = start.elapsed();
    ready
}

/// The pixels as `uint8 [3, H, W]`.
fn to_tensor(image: &images::RgbImage) -> Result<Tensor, String> {
    image
        .to_tensor()
        .map_err(|e| format!("cannot hold the pixels: {e}"))
}

/// Moves a decoded `uint8 [3, H, W]` image to `device` and preprocesses it there. On CUDA the
/// host copy goes through pinned (page-locked) memory with a non-blocking transfer, so the copy
/// overlaps with the GPU work already queued; pinned blocks come from libtorch's caching host
/// allocator, which keeps them alive until the transfer is done.
fn on_device(image: &Tensor, device: Device, transform: &Transform) -> Result<Tensor, String> {
    let copy = || -> Result<Tensor, tch::TchError> {
        if device.is_cuda() {
            // Pinning can fail (e.g. page-locked memory exhausted): fall back to a plain copy.
            if let Ok(pinned) = image.f_pin_memory(device) {
                return pinned.f_to_device_(device, image.kind(), true, false);
            }
        }
        image.f_to_device(device)
    };
    let image = copy().map_err(|e| format!("cannot copy to {device:?}: {e}"))?;
    transform.apply(&image).map_err(cannot_preprocess)
}

/// `cannot preprocess: ` and why (without the `preprocess: ` of the transform's own errors).
fn cannot_preprocess(error: mobilenet::Error) -> String {
    match error {
        mobilenet::Error::BadInput { msg, .. } => format!("cannot preprocess: {msg}"),
        other => format!("cannot preprocess: {other}"),
    }
}

struct BatchClassifier<'a> {
    model: &'a Model,
    /// The engine's lanes, which ran the trunk in the workers: the head is left.
    lanes: Option<&'a mobilenet::ffi::Lanes<'a>>,
    device: Device,
    kind: Kind,
    k: i64,
    /// The side of the square images.
    crop: i64,
    /// The time spent in [`BatchClassifier::top_k`], the batches and images it classified.
    model_time: Cell<Duration>,
    batches: Cell<usize>,
    images: Cell<usize>,
}

impl BatchClassifier<'_> {
    /// Top-k `(index, probability)` for each preprocessed image `[3, S, S]`.
    fn top_k(&self, images: &[&Ready]) -> anyhow::Result<Vec<Vec<(i64, f32)>>> {
        let start = Instant::now();
        let top = self.run(images);
        self.model_time.set(self.model_time.get() + start.elapsed());
        self.batches.set(self.batches.get() + 1);
        self.images.set(self.images.get() + images.len());
        top
    }

    fn run(&self, images: &[&Ready]) -> anyhow::Result<Vec<Vec<(i64, f32)>>> {
        let logits = match self.features(images) {
            Some((lanes, pooled)) => lanes.head(&pooled)?,
            None => {
                let xs = self
                    .batch(images)?
                    .f_to_device_(self.device, self.kind, false, false)?;
                self.model.f_forward_t(&xs, false)?
            }
        };
        let probs = logits.f_softmax(-1, Kind::Float)?;
        let (values, indices) = probs.f_topk(self.k, -1, true, true)?;
        let values: Vec<f32> = values
            .f_to_device(Device::Cpu)?
            .f_flatten(0, -1)?
            .try_into()?;
        let indices: Vec<i64> = indices
            .f_to_device(Device::Cpu)?
            .f_flatten(0, -1)?
            .try_into()?;
        let k = self.k as usize;
        Ok(indices
            .chunks(k)
            .zip(values.chunks(k))
            .map(|(i, v)| i.iter().copied().zip(v.iter().copied()).collect())
            .collect())
    }

    /// The lanes and the images' pooled features one after another, when the lanes ran them.
    fn features(&self, images: &[&Ready]) -> Option<(&mobilenet::ffi::Lanes<'_>, Vec<f32>)> {
        let lanes = self.lanes?;
        let mut pooled = Vec::with_capacity(images.len() * lanes.channels());
        for image in images {
            let Ready::Features(f) = image else {
                return None;
            };
            pooled.extend_from_slice(f);
        }
        Some((lanes, pooled))
    }

    /// The images as one `float32 [N, 3, S, S]` tensor on the CPU: PIL's values joined
    /// (channels-last strides, as the model runs), the tensor path's stacked.
    fn batch(&self, images: &[&Ready]) -> anyhow::Result<Tensor> {
        let floats: Option<Vec<&[f32]>> = images
            .iter()
            .map(|r| match r {
                Ready::Floats(v) => Some(v.as_slice()),
                _ => None,
            })
            .collect();
        if let Some(floats) = floats {
            let (n, s) = (images.len() as i64, self.crop);
            return Ok(Tensor::f_from_slice(&floats.concat())?
                .f_view([n, s, s, 3])?
                .f_permute([0, 3, 1, 2])?);
        }
        let tensors: Vec<&Tensor> = images
            .iter()
            .filter_map(|r| match r {
                Ready::Tensor(t) => Some(t),
                _ => None,
            })
            .collect();
        Ok(Tensor::f_stack(&tensors, 0)?)
    }
}

/// Where the results go.
enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    /// `--output`.
    File(JsonLinesFile),
}

impl Sink {
    /// What write errors name: stdout, or the file written.
    fn name(&self) -> String {
        match self {
            Sink::Stdout(_) => "stdout".into(),
            Sink::File(file) => file.partial().display().to_string(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(buf),
            Sink::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(file) => file.flush(),
        }
    }
}

struct Report<W: Write> {
    /// JSON Lines rather than tables.
    json: bool,
    /// Whether failed inputs are also reported on stderr.
    errors_to_stderr: bool,
    /// What `out` is, for errors.
    destination: String,
    out: W,
    bar: Option<ProgressBar>,
    labels: Labels,
    failed: usize,
    total: usize,
}

impl<W: Write> Report<W> {
    /// Classifies the images among `pending` and prints every entry in order, then flushes (a
    /// file's lines reach the OS batch by batch). Returns false when stdout is closed (e.g.
    /// piped into `head`), to stop quietly.
    fn flush(
        &mut self,
        classifier: &BatchClassifier,
        pending: &mut Vec<(PathBuf, Result<Ready, String>)>,
    ) -> anyhow::Result<bool> {
        let images: Vec<&Ready> = pending
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .collect();
        let mut tops = match images.is_empty() {
            true => Ok(Vec::new()),
            false => classifier
                .top_k(&images)
                .map_err(|e| format!("inference failed: {e:#}")),
        }
        .map(Vec::into_iter);
        for (path, entry) in pending.drain(..) {
            let result = match (entry, &mut tops) {
                (Err(reason), _) => Err(reason),
                (Ok(_), Ok(tops)) => Ok(tops.next().context("one result per image")?),
                (Ok(_), Err(reason)) => Err(reason.clone()),
            };
            let printed = self.print(&path, result);
            if !self.written(printed)? {
                return Ok(false);
            }
        }
        let flushed = self.out.flush();
        self.written(flushed)
    }

    /// Whether a write went through: false when stdout is closed, an error naming where the
    /// results go on any other failure.
    fn written(&self, result: std::io::Result<()>) -> anyhow::Result<bool> {
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("cannot write the results to {}", self.destination))
            }
        }
    }

    fn print(
        &mut self,
        path: &Path,
        result: Result<Vec<(i64, f32)>, String>,
    ) -> std::io::Result<()> {
        self.total += 1;
        let result = result.map_err(|reason| without_backtrace(&reason));
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        let shown = path.display().to_string();
        let top: Vec<Class> = match &result {
            Ok(top) => top
                .iter()
                .map(|&(index, probability)| Class {
                    index,
                    label: self.labels.label(index),
                    probability,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if let Err(reason) = &result {
            self.failed += 1;
            if self.errors_to_stderr {
                let message = format!("error: {shown}: {reason}");
                match &self.bar {
                    Some(bar) => bar.suspend(|| eprintln!("{message}")),
                    None => eprintln!("{message}"),
                }
            }
            if !self.json {
                return Ok(());
            }
        }
        let text = if self.json {
            let record = match &result {
                Ok(_) => Record::Top {
                    path: shown,
                    top: &top,
                },
                Err(reason) => Record::Error {
                    path: shown,
                    error: reason,
                },
            };
            serde_json::to_string(&record).map_err(std::io::Error::other)? + "\n"
        } else {
            let mut text = format!("{shown}\n  rank  class     prob  label\n");
            for (rank, c) in top.iter().enumerate() {
                // Names from classes.json may hold control characters.
                text += &format!(
                    "  {:>4}  {:>5}  {:>6.2}%  {}\n",
                    rank + 1,
                    c.index,
                    c.probability * 100.0,
                    escape(&c.label)
                );
            }
            text + "\n"
        };
        match &self.bar {
            Some(bar) => bar.suspend(|| self.out.write_all(text.as_bytes())),
            None => self.out.write_all(text.as_bytes()),
        }
    }

    fn exit_code(&self) -> ExitCode {
        if self.failed > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed} ({eta} left)")
    {
        bar.set_style(style);
    }
    bar
}

/// The process's peak resident set size in KiB (`VmHWM` in /proc/self/status), on Linux.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    /// A thread waits while `window` taken inputs wait for the consumer, goes on when one is
    /// consumed, and gets `None` when the consumer is gone.
    #[test]
    fn gate_hands_out_at_most_window_ahead() {
        let inputs = (0..5)
            .map(|i| Input::Image(PathBuf::from(format!("{i}.png"))))
            .collect();
        let gate = Arc::new(Gate::new(inputs));
        let index = |g: &Gate| g.take(2).map(|(i, _)| i);
        assert_eq!(index(&gate), Some(0));
        assert_eq!(index(&gate), Some(1));
        let waiting = |gate: &Arc<Gate>| {
            let g = Arc::clone(gate);
            let h = thread::spawn(move || index(&g));
            thread::sleep(Duration::from_millis(100));
            assert!(!h.is_finished(), "took a third while two wait");
            h
        };
        let h = waiting(&gate);
        gate.consumed(1);
        assert_eq!(h.join().unwrap(), Some(2));
        let h = waiting(&gate);
        drop(StopOnDrop(Arc::clone(&gate)));
        assert_eq!(h.join().unwrap(), None);
        assert_eq!(index(&gate), None);
    }
}
