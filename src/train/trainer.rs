//! The training loop of `mobilenet train`, as torchvision's `references/classification/train.py`
//! runs it: per epoch, the batches in a (seeded) order, each a train-mode forward, the
//! cross-entropy loss (with label smoothing), backward, one optimizer step and an optional EMA
//! update; then the scheduler steps once, the validation set is evaluated, and the outputs are
//! written.
//!
//! The parameters are grouped as torchvision's `set_weight_decay` groups them
//! ([`super::set_weight_decay`]), so a state dict of our optimizer names the same indices.
//! Checkpoints hold plain values in the shape of torchvision's (`model`, `optimizer`,
//! `lr_scheduler`, `epoch`, `args`, plus `model_ema`, `step` and `rng`), so `--resume`
//! continues exactly, and `torch.load(weights_only=True)` reads them.

use super::amp::GradScaler;
use super::augment::{Augment, Rng, SamplePrep};
use super::data::{batches, Batch, Sample};
use super::dist::{shard, Dist};
use super::memory;
use super::metrics::EpochMetrics;
use super::{
    set_weight_decay, AdamW, AdamWOptions, LrGroups, Optimize, Optimizer, RmsProp, RmsPropOptions,
    Rule, Scheduler, Sgd, SgdOptions,
};
use crate::device::Precision;
use crate::ffi::{Autocast, Reducer};
use crate::models::{Dropout, Model};
use crate::nn::NormKind;
use crate::value::{Dict, Value};
use crate::weights::is_norm_buffer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Reduction, Tensor};

/// The optimizer of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OptimizerKind {
    /// `SGD(momentum, weight_decay, nesterov)`, dampening 0.
    Sgd,
    /// `AdamW(lr, weight_decay)`, betas (0.9, 0.999), eps 1e-8.
    Adamw,
    /// `RMSprop(momentum, weight_decay, eps=0.0316, alpha=0.9)` (torchvision's recipe).
    Rmsprop,
}

/// The learning-rate schedule, stepped once per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ScheduleKind {
    /// The learning rate stays (`StepLR` with gamma 1).
    Constant,
    /// `StepLR(step_size, gamma)`.
    Step,
    /// `CosineAnnealingLR(T_max = epochs - warmup_epochs, eta_min)`.
    Cosine,
}

/// Everything about a run but the model and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Epochs to run (with `steps`, as many as the steps need).
    pub epochs: i64,
    /// Stop after this many optimizer steps (the last epoch may be partial).
    pub steps: Option<i64>,
    pub batch_size: usize,
    pub resolution: i64,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// torchvision's `--norm-weight-decay`: the decay of norm layers' parameters.
    pub norm_weight_decay: Option<f64>,
    pub schedule: ScheduleKind,
    pub lr_step_size: i64,
    pub lr_gamma: f64,
    pub lr_min: f64,
    pub warmup_epochs: i64,
    /// The warm-up's start factor (torchvision's `--lr-warmup-decay`).
    pub warmup_decay: f64,
    pub label_smoothing: f64,
    pub augment: Augment,
    pub shuffle: bool,
    pub seed: u64,
    /// EMA decay of the weights (timm's `ModelEmaV2`, updated after every step).
    pub ema: Option<f64>,
    pub workers: usize,
    /// Train the classifier only; the features run in eval mode (running statistics fixed).
    pub freeze_features: bool,
    /// fp32, or autocast in bf16 or fp16 (with loss scaling), as `torch.autocast` runs it.
    pub precision: Precision,
    /// ImageNet (or the family's) normalization of the inputs.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// Under data-parallel training, BatchNorm normalizes over every rank's batch
    /// (`nn.SyncBatchNorm`); a no-op in a single process. Left out of the saved arguments when
    /// off, so checkpoints from before the option resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
    /// Under data-parallel training, the size of the gradient buckets in MiB (DDP's
    /// `bucket_cap_mb`); `None` is DDP's default, 25 MiB and a first bucket of 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_cap_mb: Option<f64>,
}

impl TrainOptions {
    /// Errors on values torch would refuse or that cannot run.
    pub fn validate(&self) -> Result<()> {
        let check = Error::check;
        check(
            self.epochs >= 1,
            "epochs",
            format!("{} is not >= 1", self.epochs),
        )?;
        if let Some(s) = self.steps {
            check(s >= 1, "steps", format!("{s} is not >= 1"))?;
        }
        check(self.batch_size >= 1, "batch size", "must be >= 1".into())?;
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        for (what, v) in [
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("weight decay", self.weight_decay),
            ("lr gamma", self.lr_gamma),
            ("lr min", self.lr_min),
        ] {
            check(finite(v), what, format!("{v} is not a finite number >= 0"))?;
        }
        if let Some(mb) = self.bucket_cap_mb {
            check(
                mb.is_finite() && mb > 0.0 && mb <= 1024.0 * 1024.0,
                "bucket cap",
                format!("{mb} MiB is not a size in (0, 1048576]"),
            )?;
        }
        if let Some(v) = self.norm_weight_decay {
            check(
                finite(v),
                "norm weight decay",
                format!("{v} is not a finite number >= 0"),
            )?;
        }
        check(
            (0.0..=1.0).contains(&self.label_smoothing),
            "label smoothing",
            format!("{} is not in [0, 1]", self.label_smoothing),
        )?;
        if let Some(d) = self.ema {
            check(
                (0.0..1.0).contains(&d),
                "ema",
                format!("decay {d} is not in [0, 1)"),
            )?;
        }
        check(
            self.warmup_epochs >= 0,
            "warmup epochs",
            format!("{} is not >= 0", self.warmup_epochs),
        )?;
        check(
            !self.nesterov || self.optimizer == OptimizerKind::Sgd,
            "nesterov",
            "applies to --optimizer sgd only".into(),
        )?;
        check(
            !self.nesterov || self.momentum > 0.0,
            "nesterov",
            "Nesterov momentum requires a momentum and zero dampening".into(),
        )
    }
}

/// The optimizer the options chose.
#[derive(Debug)]
enum AnyOptimizer {
    Sgd(Optimizer<Sgd>),
    AdamW(Optimizer<AdamW>),
    RmsProp(Optimizer<RmsProp>),
}

impl AnyOptimizer {
    fn optimize(&mut self) -> &mut dyn Optimize {
        match self {
            AnyOptimizer::Sgd(o) => o,
            AnyOptimizer::AdamW(o) => o,
            AnyOptimizer::RmsProp(o) => o,
        }
    }

    fn lr_groups(&mut self) -> &mut dyn LrGroups {
        match self {
            AnyOptimizer::Sgd(o) => o,
            AnyOptimizer::AdamW(o) => o,
            AnyOptimizer::RmsProp(o) => o,
        }
    }
}

/// An exponential moving average of the model's state (timm's `ModelEmaV2`): after every step,
/// `ema = decay * ema + (1 - decay) * value` for floating-point tensors; counters are copied.
#[derive(Debug)]
struct Ema {
    decay: f64,
    /// `(name, average, live tensor)` in state-dict order.
    tensors: Vec<(String, Tensor, Tensor)>,
}

impl Ema {
    fn new(decay: f64, state: &[(String, Tensor)]) -> Result<Ema> {
        let tensors = state
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.f_detach_copy()?, t.shallow_clone())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Ema { decay, tensors })
    }

    fn update(&mut self) -> Result<()> {
        tch::no_grad(|| {
            for (_, avg, live) in &mut self.tensors {
                if avg.is_floating_point() {
                    let _ = avg.f_mul_scalar_(self.decay)?;
                    let _ = avg.f_add_(&live.f_mul_scalar(1.0 - self.decay)?)?;
                } else {
                    avg.f_copy_(live)?;
                }
            }
            Ok(())
        })
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .iter()
            .map(|(k, t, _)| (k.clone(), t.shallow_clone()))
            .collect()
    }
}

/// What the loop reports while it runs.
#[derive(Debug)]
pub enum Progress<'a> {
    /// An epoch starts: its number (1-based) and how many batches it has at most.
    EpochStart { epoch: i64, batches: usize },
    /// A training step finished: the steps done in the whole run (1-based, counting any before a
    /// resume), and the running loss and accuracy of the epoch so far.
    Step { step: i64, loss: f64, top1: f64 },
    /// A file was left out.
    Skipped {
        path: &'a std::path::Path,
        why: &'a str,
    },
    /// A batch of one image was left out (BatchNorm cannot train on one value per channel).
    SingleImageBatch,
    /// Data-parallel training rebuilt its gradient buckets (once, at the second step) in the
    /// order the first backward produced the gradients: each bucket's parameter names, in the
    /// order the buckets are all-reduced.
    BucketsRebuilt { buckets: &'a [Vec<String>] },
}

/// A model, its optimizer, schedule and EMA, and where the run is.
pub struct Trainer {
    model: Model,
    options: TrainOptions,
    optimizer: AnyOptimizer,
    scheduler: Scheduler,
    ema: Option<Ema>,
    /// fp16 only.
    scaler: Option<GradScaler>,
    /// A data-parallel run's rank, the buffers rank 0 broadcasts before each forward, and the
    /// reducer that averages the gradients.
    dist: Option<(Dist, Vec<Tensor>, Reducer)>,
    /// The parameters the optimizer steps, and their names.
    params: Vec<Tensor>,
    param_names: Vec<String>,
    /// The gradient buckets, when the last step rebuilt them.
    rebuilt: Option<Vec<Vec<String>>>,
    /// Epochs finished.
    epoch: i64,
    /// Optimizer steps taken.
    step: i64,
    /// The epochs the whole run has.
    total_epochs: i64,
    /// Images trained on and seconds spent in the training loops (data loading included) by
    /// this process.
    loop_images: usize,
    loop_seconds: f64,
    /// State-dict keys in module order.
    keys: Vec<String>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("epoch", &self.epoch)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Sets up the optimizer over `model`'s trainable parameters (the classifier's only with
    /// `freeze_features`) and the schedule over `total_epochs` epochs.
    pub fn new(model: Model, options: TrainOptions, total_epochs: i64) -> Result<Trainer> {
        options.validate()?;
        if model.is_folded() {
            return Err(Error::config(
                "model",
                "the BatchNorms are folded: unfold them to train",
            ));
        }
        if options.sync_bn && model.config().norm != NormKind::Batch {
            return Err(Error::config(
                "sync-bn",
                format!(
                    "synchronizes BatchNorm, but the model's norm is {} (use --norm batch)",
                    model.config().norm
                ),
            ));
        }
        let spec = model.network().spec();
        let keys: Vec<String> = spec
            .variables(&model.config().norm)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let head: Vec<&str> = spec.head.iter().map(|l| l.path).collect();
        let vars = model.var_store().variables();
        let norm_ptrs = model.network().norm_parameter_ptrs();
        let mut params = Vec::new();
        for key in &keys {
            let t = vars
                .get(key)
                .ok_or_else(|| Error::config("model", format!("no variable {key}")))?;
            if is_norm_buffer(key) {
                continue; // running statistics and counters
            }
            let in_head = head.iter().any(|h| key.starts_with(&format!("{h}.")));
            if options.freeze_features && !in_head {
                let _ = t.f_set_requires_grad(false)?;
                continue;
            }
            let is_norm = norm_ptrs.contains(&(t.data_ptr() as usize));
            params.push((key.clone(), t.shallow_clone(), is_norm));
        }
        let trainable: Vec<Tensor> = params.iter().map(|(_, t, _)| t.shallow_clone()).collect();
        let param_names: Vec<String> = params.iter().map(|(k, _, _)| k.clone()).collect();
        let groups = set_weight_decay(params, options.weight_decay, options.norm_weight_decay, &[]);
        let lr = options.lr;
        let mut optimizer = match options.optimizer {
            OptimizerKind::Sgd => {
                let o = SgdOptions {
                    momentum: options.momentum,
                    nesterov: options.nesterov,
                    ..Default::default()
                };
                let g = groups.into_iter().map(|g| g.into_param_group(lr, o));
                AnyOptimizer::Sgd(Optimizer::new(g.collect())?)
            }
            OptimizerKind::Adamw => {
                let o = AdamWOptions::default();
                let g = groups.into_iter().map(|g| g.into_param_group(lr, o));
                AnyOptimizer::AdamW(Optimizer::new(g.collect())?)
            }
            OptimizerKind::Rmsprop => {
                let o = RmsPropOptions::torchvision(options.momentum);
                let g = groups.into_iter().map(|g| g.into_param_group(lr, o));
                AnyOptimizer::RmsProp(Optimizer::new(g.collect())?)
            }
        };
        let main = match options.schedule {
            ScheduleKind::Constant => Rule::Step {
                step_size: 1,
                gamma: 1.0,
            },
            ScheduleKind::Step => Rule::Step {
                step_size: options.lr_step_size,
                gamma: options.lr_gamma,
            },
            ScheduleKind::Cosine => Rule::CosineAnnealing {
                t_max: (total_epochs - options.warmup_epochs).max(1),
                eta_min: options.lr_min,
            },
        };
        let scheduler = Scheduler::with_linear_warmup(
            main,
            options.warmup_epochs,
            options.warmup_decay,
            optimizer.lr_groups(),
        )?;
        let mut trainer = Trainer {
            model,
            options,
            optimizer,
            scheduler,
            ema: None,
            scaler: None,
            dist: None,
            params: trainable,
            param_names,
            rebuilt: None,
            epoch: 0,
            step: 0,
            total_epochs,
            loop_images: 0,
            loop_seconds: 0.0,
            keys,
        };
        if trainer.options.precision == Precision::Fp16 {
            trainer.scaler = Some(GradScaler::new(trainer.model.device())?);
        }
        if let Some(decay) = trainer.options.ema {
            trainer.ema = Some(Ema::new(decay, &trainer.state_dict()?)?);
        }
        Ok(trainer)
    }

    /// Makes this a rank of a data-parallel run: takes rank 0's parameters, buffers and EMA,
    /// then trains on this rank's shard, averaging gradients (and with `sync_bn`, normalizing
    /// every BatchNorm over all ranks' batches).
    pub fn with_dist(mut self, dist: Dist) -> Result<Trainer> {
        // nn.SyncBatchNorm runs as BatchNorm2d at a world size of 1.
        if self.options.sync_bn && dist.world > 1 {
            let mut synced = 0;
            for conv in self.model.network().convs() {
                if let Some(bn) = conv.norm().as_batch_norm() {
                    bn.synchronize(dist.group())?;
                    synced += 1;
                }
            }
            let all = self.keys.iter().filter(|k| k.ends_with(".running_mean"));
            if all.count() != synced {
                return Err(Error::config(
                    "sync-bn",
                    format!("found {synced} of the model's BatchNorms to synchronize"),
                ));
            }
        }
        let state = self.state_dict()?;
        let mut all: Vec<Tensor> = state.iter().map(|(_, t)| t.shallow_clone()).collect();
        if let Some(ema) = &self.ema {
            all.extend(ema.state_dict().into_iter().map(|(_, t)| t));
        }
        dist.broadcast(&all)?;
        let buffers = state
            .into_iter()
            .filter(|(k, _)| is_norm_buffer(k))
            .map(|(_, t)| t)
            .collect();
        let reducer = dist.reducer(&self.params, &self.param_names, self.options.bucket_cap_mb)?;
        self.dist = Some((dist, buffers, reducer));
        Ok(self)
    }

    /// The data-parallel rank, if any.
    pub fn dist(&self) -> Option<&Dist> {
        self.dist.as_ref().map(|(d, _, _)| d)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    pub fn step(&self) -> i64 {
        self.step
    }

    pub fn total_epochs(&self) -> i64 {
        self.total_epochs
    }

    /// Training images per second over this process's training loops (data loading included,
    /// validation and writing excluded).
    pub fn images_per_s(&self) -> f64 {
        self.loop_images as f64 / self.loop_seconds.max(1e-9)
    }

    /// Whether the run is over: every epoch done, or the step budget spent.
    pub fn finished(&self) -> bool {
        self.epoch >= self.total_epochs || self.options.steps.is_some_and(|s| self.step >= s)
    }

    /// The model's state dict: every variable in module order (live tensors).
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let vars = self.model.var_store().variables();
        self.keys
            .iter()
            .map(|k| {
                vars.get(k)
                    .map(|t| (k.clone(), t.shallow_clone()))
                    .ok_or_else(|| Error::config("model", format!("no variable {k}")))
            })
            .collect()
    }

    /// The EMA weights' state dict, when the run keeps one.
    pub fn ema_state_dict(&self) -> Option<Vec<(String, Tensor)>> {
        self.ema.as_ref().map(Ema::state_dict)
    }

    /// The learning rate of the first group.
    pub fn lr(&mut self) -> f64 {
        self.optimizer.lr_groups().lr(0)
    }

    /// Runs one epoch over `train` (and evaluates `val`), reporting to `progress`.
    pub fn run_epoch(
        &mut self,
        train: &Arc<Vec<Sample>>,
        val: Option<&Arc<Vec<Sample>>>,
        eval: crate::preprocess::Transform,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<EpochMetrics> {
        let o = self.options.clone();
        let epoch = self.epoch;
        let start = Instant::now();
        let lr = self.lr();
        // Dropout draws from libtorch's generator: seed it per epoch, so a resumed run matches.
        tch::manual_seed((Rng::derive(o.seed, &[Rng::TORCH, epoch as u64]).next_u64() >> 1) as i64);
        let mut order: Vec<usize> = (0..train.len()).collect();
        if o.shuffle {
            Rng::derive(o.seed, &[Rng::SHUFFLE, epoch as u64]).shuffle(&mut order);
        }
        if let Some(d) = self.dist() {
            order = shard(&order, d.rank, d.world);
        }
        let prep = SamplePrep::Train {
            augment: o.augment,
            resolution: o.resolution,
            mean: o.mean,
            std: o.std,
            seed: o.seed,
            epoch: epoch as u64,
        };
        let n_batches = order.len().div_ceil(o.batch_size);
        progress(Progress::EpochStart {
            epoch: epoch + 1,
            batches: n_batches,
        });
        let one_value_per_channel = matches!(self.model.config().norm, NormKind::Batch)
            && !o.freeze_features
            && (o.resolution + 31) / 32 <= 1;
        let (mut seen, mut loss_sum, mut correct, mut skipped) = (0usize, 0.0, 0i64, 0i64);
        let device = self.model.device();
        for batch in batches(Arc::clone(train), order, prep, o.batch_size, o.workers) {
            if o.steps.is_some_and(|s| self.step >= s) {
                break;
            }
            let Batch {
                images,
                labels,
                skipped: bad,
            } = batch?;
            for (path, why) in &bad {
                progress(Progress::Skipped { path, why });
            }
            if let (Some(d), Some((path, why))) = (self.dist(), bad.first()) {
                // A rank that skipped a file would take other steps than its peers, and their
                // collectives would pair different steps: stop instead, as a DataLoader error
                // stops a DDP rank.
                return Err(Error::file(
                    path,
                    format!(
                        "{why} (rank {} of {}: data-parallel training stops at a file it cannot \
                         read; remove it)",
                        d.rank, d.world
                    ),
                ));
            }
            skipped += bad.len() as i64;
            let n = labels.size()[0] as usize;
            if n == 0 {
                continue;
            }
            if n == 1 && one_value_per_channel {
                progress(Progress::SingleImageBatch);
                continue;
            }
            let x = images.f_to_device(device)?;
            let y = labels.f_to_device(device)?;
            let (loss, hits) = self
                .train_step(&x, &y)
                .map_err(|e| memory::out_of_memory(&e, n, o.resolution).unwrap_or(e))?;
            seen += n;
            loss_sum += loss * n as f64;
            correct += hits;
            progress(Progress::Step {
                step: self.step,
                loss: loss_sum / seen as f64,
                top1: correct as f64 / seen as f64,
            });
            if let Some(buckets) = self.rebuilt.take() {
                progress(Progress::BucketsRebuilt { buckets: &buckets });
            }
        }
        let train_seconds = start.elapsed().as_secs_f64();
        self.loop_images += seen;
        self.loop_seconds += train_seconds;
        self.scheduler.step(self.optimizer.lr_groups())?;
        self.epoch += 1;
        let (val_loss, val_top1, val_top5, val_skipped) = match val {
            Some(v) if !v.is_empty() => {
                let (l, t1, t5, s) = self.evaluate(v, eval, progress)?;
                (Some(l), Some(t1), Some(t5), s)
            }
            _ => (None, None, None, 0),
        };
        let seen_f = seen.max(1) as f64;
        Ok(EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: if seen > 0 {
                loss_sum / seen_f
            } else {
                f64::NAN
            },
            train_top1: correct as f64 / seen_f,
            val_loss,
            val_top1,
            val_top5,
            images_per_s: seen as f64 / train_seconds.max(1e-9),
            seconds: start.elapsed().as_secs_f64(),
            skipped_files: skipped + val_skipped,
        })
    }

    /// One optimizer step on a batch: the batch's mean loss and how many top-1 hits.
    pub fn train_step(&mut self, x: &Tensor, y: &Tensor) -> Result<(f64, i64)> {
        // The forward and the loss under autocast (bf16/fp16), the backward outside it, as
        // torchvision's train.py runs `--amp`.
        if let Some((d, buffers, reducer)) = &self.dist {
            // DDP's `_pre_forward`: the reducer expects this step's gradients (and at the second
            // step rebuilds its buckets); then, with broadcast_buffers, every rank starts the
            // forward from rank 0's statistics.
            if d.rebuild(reducer)? {
                self.rebuilt = Some(d.bucket_names(reducer, &self.param_names)?);
            }
            d.broadcast(buffers)?;
        }
        let autocast = match self.options.precision {
            Precision::Fp32 => None,
            p => Some(Autocast::enter(self.model.device(), p.kind())?),
        };
        let logits = if self.options.freeze_features {
            self.model
                .forward_with_stages(x, false, Dropout::On)
                .map(|(l, _)| l)
        } else {
            self.model.f_forward_t(x, true)
        };
        let logits = match &self.dist {
            // With --sync-bn the forward all-reduces every BatchNorm's statistics.
            Some((d, _, _)) if self.options.sync_bn && d.world > 1 => {
                logits.map_err(|e| d.failed("forward (SyncBatchNorm's all-reduce)", e))?
            }
            _ => logits?,
        };
        let loss = logits.f_cross_entropy_loss::<Tensor>(
            y,
            None,
            Reduction::Mean,
            -100,
            self.options.label_smoothing,
        )?;
        drop(autocast);
        let opt = self.optimizer.optimize();
        opt.zero_grad();
        let backward = |loss: &Tensor| -> Result<()> {
            match &self.scaler {
                None => loss.f_backward()?,
                Some(scaler) => scaler.scale(loss)?.f_backward()?,
            }
            Ok(())
        };
        match &self.dist {
            None => backward(&loss)?,
            // DDP's `_post_forward`, then the backward, whose gradients the reducer averages in
            // buckets while it runs; it returns once every bucket is reduced.
            Some((d, _, reducer)) => d.reduce_in_backward(reducer, || backward(&loss))?,
        }
        // GradScaler.step: a step whose gradients hold an inf or NaN is skipped.
        let found_inf = match &self.scaler {
            Some(scaler) => scaler.unscale(&self.params)?,
            None => false,
        };
        if !found_inf {
            opt.step()?;
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.update(found_inf)?;
        }
        self.step += 1;
        if let Some(ema) = &mut self.ema {
            ema.update()?;
        }
        let hits = tch::no_grad(|| -> Result<i64> {
            Ok(logits
                .f_argmax(1, false)?
                .f_eq_tensor(y)?
                .f_sum(Kind::Int64)?
                .int64_value(&[]))
        })?;
        let loss = loss.f_double_value(&[])?;
        // (Under fp16 the loss scaler skips such steps and carries on, as torch's does.)
        if !loss.is_finite() && self.scaler.is_none() {
            return Err(Error::config(
                "training",
                format!("the loss is {loss} at step {}: lower --lr", self.step),
            ));
        }
        Ok((loss, hits))
    }

    /// Mean loss, top-1 and top-5 accuracy over `samples` with `eval`, in eval mode; and the
    /// files skipped.
    pub fn evaluate(
        &self,
        samples: &Arc<Vec<Sample>>,
        eval: crate::preprocess::Transform,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(f64, f64, f64, i64)> {
        let o = &self.options;
        let order: Vec<usize> = (0..samples.len()).collect();
        let device = self.model.device();
        let k = self.model.config().num_classes.min(5);
        let (mut seen, mut loss_sum, mut top1, mut top5, mut skipped) =
            (0usize, 0.0, 0i64, 0i64, 0);
        let batch_size = o.batch_size.max(32);
        for batch in batches(
            Arc::clone(samples),
            order,
            SamplePrep::Eval(eval),
            batch_size,
            o.workers,
        ) {
            let batch = batch?;
            for (path, why) in &batch.skipped {
                progress(Progress::Skipped { path, why });
            }
            skipped += batch.skipped.len() as i64;
            let n = batch.labels.size()[0] as usize;
            if n == 0 {
                continue;
            }
            tch::no_grad(|| -> Result<()> {
                let x = batch.images.f_to_device(device)?;
                let y = batch.labels.f_to_device(device)?;
                let logits = self.model.f_forward_t(&x, false)?;
                let loss = logits.f_cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    Reduction::Sum,
                    -100,
                    o.label_smoothing,
                )?;
                loss_sum += loss.f_double_value(&[])?;
                let (_, idx) = logits.f_topk(k, 1, true, true)?;
                let hit = idx.f_eq_tensor(&y.f_unsqueeze(1)?)?;
                top1 += hit.f_select(1, 0)?.f_sum(Kind::Int64)?.int64_value(&[]);
                top5 += hit.f_sum(Kind::Int64)?.int64_value(&[]);
                Ok(())
            })?;
            seen += n;
        }
        let s = seen.max(1) as f64;
        Ok((loss_sum / s, top1 as f64 / s, top5 as f64 / s, skipped))
    }

    /// The checkpoint, in the shape of torchvision's: `model`, `optimizer`, `lr_scheduler`,
    /// `epoch` (the last finished, 0-based, as torchvision counts), `args`, and `model_ema`,
    /// `step`, `rng` (the seed the random streams derive from, with the epoch).
    pub fn checkpoint(&mut self, args: Dict) -> Result<Value> {
        let mut d = Dict::new();
        d.insert("model", Value::state_dict(&self.state_dict()?));
        d.insert("optimizer", self.optimizer.optimize().state_dict());
        d.insert("lr_scheduler", self.scheduler.state_dict());
        d.insert("epoch", Value::Int(self.epoch - 1));
        d.insert("args", Value::Dict(args));
        if let Some(ema) = &self.ema {
            d.insert("model_ema", Value::state_dict(&ema.state_dict()));
        }
        if let Some(scaler) = &self.scaler {
            d.insert("scaler", scaler.state_dict()?);
        }
        d.insert("step", Value::Int(self.step));
        let rng = Dict::new()
            .with("generator", "splitmix64")
            .with("seed", Value::Int(self.options.seed as i64))
            .with("epoch", Value::Int(self.epoch));
        d.insert("rng", Value::Dict(rng));
        Ok(Value::Dict(d))
    }

    /// Continues from a checkpoint written by [`Trainer::checkpoint`] for the same model and
    /// options: the weights, optimizer and scheduler state, the EMA, the epoch and step.
    pub fn restore(&mut self, ckpt: &Value, path: &std::path::Path) -> Result<()> {
        let bad = |msg: String| Error::file(path, msg);
        let d = ckpt
            .as_dict()
            .ok_or_else(|| bad("is not a checkpoint (a dict)".into()))?;
        let field = |k: &str| d.get(k).ok_or_else(|| bad(format!("has no {k:?}")));
        let int = |k: &str| {
            field(k)?
                .as_i64()
                .ok_or_else(|| bad(format!("{k:?} is not an int")))
        };
        let seed = field("rng")?
            .as_dict()
            .and_then(|r| r.get("seed"))
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("has no rng seed".into()))?;
        if seed as u64 != self.options.seed {
            return Err(bad(format!(
                "was written with --seed {seed}, not {}: pass the same seed to resume",
                self.options.seed
            )));
        }
        let epoch = int("epoch")? + 1;
        let step = int("step")?;
        copy_state(&self.state_dict()?, field("model")?, "model").map_err(&bad)?;
        if let Some(ema) = &mut self.ema {
            let saved = field("model_ema")?;
            copy_state(&ema.state_dict(), saved, "model_ema").map_err(&bad)?;
        }
        self.optimizer
            .optimize()
            .load_state_dict(field("optimizer")?)
            .map_err(|e| bad(format!("optimizer: {e}")))?;
        self.scheduler
            .load_state_dict(field("lr_scheduler")?)
            .map_err(|e| bad(format!("lr_scheduler: {e}")))?;
        if let Some(scaler) = &mut self.scaler {
            scaler
                .load_state_dict(field("scaler")?)
                .map_err(|e| bad(format!("scaler: {e}")))?;
        }
        self.epoch = epoch;
        self.step = step;
        Ok(())
    }
}

/// Copies a saved state dict into `live`, key for key, shape for shape.
fn copy_state(
    live: &[(String, Tensor)],
    saved: &Value,
    what: &str,
) -> std::result::Result<(), String> {
    let saved = saved
        .as_dict()
        .ok_or_else(|| format!("{what:?} is not a state dict"))?;
    if saved.len() != live.len() {
        return Err(format!(
            "{what:?} holds {} tensors, the model has {}",
            saved.len(),
            live.len()
        ));
    }
    tch::no_grad(|| {
        for (k, t) in live {
            let s = saved
                .get(k.as_str())
                .and_then(Value::as_tensor)
                .ok_or_else(|| format!("{what:?} has no tensor {k}"))?;
            if s.size() != t.size() || s.kind() != t.kind() {
                return Err(format!(
                    "{what:?}: {k} is {:?} {:?}, the model's is {:?} {:?}",
                    s.kind(),
                    s.size(),
                    t.kind(),
                    t.size()
                ));
            }
            t.shallow_clone()
                .f_copy_(s)
                .map_err(|e| format!("{what:?}: {k}: {e}"))?;
        }
        Ok(())
    })
}
