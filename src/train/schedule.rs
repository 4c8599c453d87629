//! Learning-rate schedules as `torch/optim/lr_scheduler.py` computes them: [`Rule::Step`]
//! (`StepLR`), [`Rule::CosineAnnealing`] (`CosineAnnealingLR`), [`Rule::Linear`] (`LinearLR`),
//! and [`SequentialLr`] (`SequentialLR`), which chains a linear warm-up to the main schedule as
//! torchvision's `references/classification/train.py` does (`--lr-warmup-epochs`), stepped once
//! per epoch.
//!
//! Each `step` computes what torch's `get_lr()` gives: the recursive form, from the groups'
//! current learning rates (so a learning rate changed by hand carries on, as in torch), and the
//! closed form only where torch uses it (a `SequentialLR` milestone). The state (`last_epoch`,
//! `_step_count`, `base_lrs`, `_last_lr`, the rule's own fields) is written and read back in the
//! shape of torch's `state_dict()`.
//!
//! ```
//! use mobilenet::train::{LrGroups, Optimizer, ParamGroup, Rule, Scheduler, Sgd, SgdOptions};
//! use tch::{Kind, Tensor};
//!
//! let w = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
//! let group = ParamGroup::new(vec![w], 0.1, 0.0, SgdOptions::default());
//! let mut opt = Optimizer::<Sgd>::new(vec![group])?;
//! // 2 warm-up epochs from 0.1 x lr, then cosine annealing over the 8 others.
//! let cosine = Rule::CosineAnnealing { t_max: 8, eta_min: 0.0 };
//! let mut sched = Scheduler::with_linear_warmup(cosine, 2, 0.1, &mut opt)?;
//! assert!((opt.lr(0) - 0.01).abs() < 1e-12);
//! sched.step(&mut opt)?;
//! sched.step(&mut opt)?;
//! assert!((opt.lr(0) - 0.1).abs() < 1e-12);
//! # Ok::<(), mobilenet::Error>(())
//! ```

use std::f64::consts::PI;

use crate::value::{Dict, Parse, Value};
use crate::{Error, Result};

/// The learning rates a scheduler drives: torch's `optimizer.param_groups[i]["lr"]` and
/// `["initial_lr"]`.
pub trait LrGroups {
    fn group_count(&self) -> usize;
    fn lr(&self, group: usize) -> f64;
    fn set_lr(&mut self, group: usize, lr: f64);
    fn initial_lr(&self, group: usize) -> Option<f64>;
    fn set_initial_lr(&mut self, group: usize, lr: f64);
}

/// How one scheduler changes the learning rate each epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `StepLR`: times `gamma` every `step_size` epochs.
    Step { step_size: i64, gamma: f64 },
    /// `CosineAnnealingLR`: from the base learning rate down to `eta_min` over `t_max` epochs
    /// (and back up over the next `t_max`).
    CosineAnnealing { t_max: i64, eta_min: f64 },
    /// `LinearLR`: from `start_factor` to `end_factor` times the base learning rate over
    /// `total_iters` epochs.
    Linear {
        start_factor: f64,
        end_factor: f64,
        total_iters: i64,
    },
}

impl Rule {
    /// torch's `LinearLR` checks, and the positive periods that torch divides by.
    fn check(&self) -> Parse<()> {
        match *self {
            Rule::Step { step_size, .. } if step_size < 1 => {
                Err(format!("step_size must be at least 1, got {step_size}"))
            }
            Rule::CosineAnnealing { t_max, .. } if t_max < 1 => {
                Err(format!("T_max must be at least 1, got {t_max}"))
            }
            Rule::Linear { start_factor, .. } if !(start_factor > 0.0 && start_factor <= 1.0) => {
                Err(
                    "Starting multiplicative factor expected to be greater than 0 and less or \
                     equal to 1."
                        .into(),
                )
            }
            Rule::Linear { end_factor, .. } if !(0.0..=1.0).contains(&end_factor) => {
                Err("Ending multiplicative factor expected to be between 0 and 1.".into())
            }
            Rule::Linear { total_iters, .. } if total_iters < 1 => {
                Err(format!("total_iters must be at least 1, got {total_iters}"))
            }
            _ => Ok(()),
        }
    }

    /// torch's class name.
    fn name(&self) -> &'static str {
        match self {
            Rule::Step { .. } => "StepLR",
            Rule::CosineAnnealing { .. } => "CosineAnnealingLR",
            Rule::Linear { .. } => "LinearLR",
        }
    }

    /// The rule's own entries of torch's state dict (its constructor arguments).
    fn write(&self, d: &mut Dict) {
        match *self {
            Rule::Step { step_size, gamma } => {
                d.insert("step_size", step_size);
                d.insert("gamma", gamma);
            }
            Rule::CosineAnnealing { t_max, eta_min } => {
                d.insert("T_max", t_max);
                d.insert("eta_min", eta_min);
            }
            Rule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                d.insert("start_factor", start_factor);
                d.insert("end_factor", end_factor);
                d.insert("total_iters", total_iters);
            }
        }
    }

    /// The same rule with the fields of a state dict.
    fn read(&self, d: &Dict) -> Parse<Rule> {
        let rule = match self {
            Rule::Step { .. } => Rule::Step {
                step_size: d.i64("step_size")?,
                gamma: d.f64("gamma")?,
            },
            Rule::CosineAnnealing { .. } => Rule::CosineAnnealing {
                t_max: d.i64("T_max")?,
                eta_min: d.f64("eta_min")?,
            },
            Rule::Linear { .. } => Rule::Linear {
                start_factor: d.f64("start_factor")?,
                end_factor: d.f64("end_factor")?,
                total_iters: d.i64("total_iters")?,
            },
        };
        rule.check()?;
        Ok(rule)
    }
}

/// One scheduler (torch's `LRScheduler` subclass for its [`Rule`]), bound to an optimizer's
/// groups at construction; every call takes the same optimizer.
#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    rule: Rule,
    base_lrs: Vec<f64>,
    last_epoch: i64,
    /// torch's `_step_count`: calls to `step` including the one in the constructor.
    step_count: i64,
    last_lr: Vec<f64>,
}

impl LrScheduler {
    /// torch's constructor with `last_epoch=-1`: sets each group's `initial_lr` if it has none,
    /// takes those as `base_lrs`, and takes the initial step (which sets the first epoch's
    /// learning rates).
    pub fn new(rule: Rule, opt: &mut dyn LrGroups) -> Result<Self> {
        rule.check().map_err(|msg| config(rule.name(), msg))?;
        let base_lrs = (0..opt.group_count())
            .map(|i| {
                let lr = opt.initial_lr(i).unwrap_or(opt.lr(i));
                opt.set_initial_lr(i, lr);
                lr
            })
            .collect();
        let mut s = LrScheduler {
            rule,
            base_lrs,
            last_epoch: -1,
            step_count: 0,
            last_lr: Vec::new(),
        };
        s.initial_step(opt)?;
        Ok(s)
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// The epoch of the learning rates set last (0 after construction).
    pub fn last_epoch(&self) -> i64 {
        self.last_epoch
    }

    /// `get_last_lr()`: the groups' learning rates as the last step set them.
    pub fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    /// `scheduler.step()`: the next epoch's learning rates into `opt`.
    pub fn step(&mut self, opt: &mut dyn LrGroups) -> Result<()> {
        self.step_count += 1;
        self.update_lr(opt, None, false)
    }

    /// `_initial_step()`: a step in "initial" mode (`_is_initial`), which some rules answer
    /// with the learning rates as they are.
    fn initial_step(&mut self, opt: &mut dyn LrGroups) -> Result<()> {
        self.step_count = 0;
        self.step_count += 1;
        self.update_lr(opt, None, true)
    }

    /// `_update_lr(epoch)`: the recursive `get_lr()` for the next epoch, or the closed form at
    /// a given `epoch` (what `SequentialLR` asks of a scheduler at its milestone).
    fn update_lr(
        &mut self,
        opt: &mut dyn LrGroups,
        epoch: Option<i64>,
        initial: bool,
    ) -> Result<()> {
        if opt.group_count() != self.base_lrs.len() {
            return Err(config(
                self.rule.name(),
                format!(
                    "built for {} parameter groups, the optimizer has {}",
                    self.base_lrs.len(),
                    opt.group_count()
                ),
            ));
        }
        let values: Vec<f64> = match epoch {
            None => {
                self.last_epoch += 1;
                (0..self.base_lrs.len())
                    .map(|i| self.get_lr(opt.lr(i), self.base_lrs[i], initial))
                    .collect()
            }
            Some(epoch) => {
                self.last_epoch = epoch;
                self.base_lrs
                    .iter()
                    .map(|&b| self.closed_form_lr(b))
                    .collect()
            }
        };
        for (i, lr) in values.into_iter().enumerate() {
            opt.set_lr(i, lr);
        }
        self.last_lr = (0..opt.group_count()).map(|i| opt.lr(i)).collect();
        Ok(())
    }

    /// torch's `get_lr()` for one group whose learning rate is `lr` now.
    fn get_lr(&self, lr: f64, base_lr: f64, initial: bool) -> f64 {
        let epoch = self.last_epoch;
        match self.rule {
            Rule::Step { step_size, gamma } => {
                if epoch == 0 || epoch.rem_euclid(step_size) != 0 {
                    lr
                } else {
                    lr * gamma
                }
            }
            Rule::CosineAnnealing { t_max, eta_min } => {
                let t_max_f = t_max as f64;
                if initial {
                    lr
                } else if self.step_count == 1 && epoch > 0 {
                    eta_min
                        + (base_lr - eta_min) * (1.0 + (epoch as f64 * PI / t_max_f).cos()) / 2.0
                } else if (epoch - 1 - t_max).rem_euclid(2 * t_max) == 0 {
                    lr + (base_lr - eta_min) * (1.0 - (PI / t_max_f).cos()) / 2.0
                } else {
                    (1.0 + (PI * epoch as f64 / t_max_f).cos())
                        / (1.0 + (PI * (epoch - 1) as f64 / t_max_f).cos())
                        * (lr - eta_min)
                        + eta_min
                }
            }
            Rule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if epoch == 0 {
                    lr * start_factor
                } else if initial || epoch > total_iters {
                    lr
                } else {
                    lr * (1.0
                        + (end_factor - start_factor)
                            / (total_iters as f64 * start_factor
                                + (epoch - 1) as f64 * (end_factor - start_factor)))
                }
            }
        }
    }

    /// torch's `_get_closed_form_lr()` at `last_epoch`.
    fn closed_form_lr(&self, base_lr: f64) -> f64 {
        let epoch = self.last_epoch;
        match self.rule {
            Rule::Step { step_size, gamma } => {
                base_lr * gamma.powf(epoch.div_euclid(step_size) as f64)
            }
            Rule::CosineAnnealing { t_max, eta_min } => {
                eta_min
                    + (base_lr - eta_min) * (1.0 + (PI * epoch as f64 / t_max as f64).cos()) / 2.0
            }
            Rule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                base_lr
                    * (start_factor
                        + (end_factor - start_factor) * total_iters.min(epoch) as f64
                            / total_iters as f64)
            }
        }
    }

    /// torch's `state_dict()`: the rule's fields, `base_lrs`, `last_epoch`, `_step_count`,
    /// `_is_initial` and `_get_lr_called_within_step` (both false between calls), `_last_lr`.
    pub fn state_dict(&self) -> Value {
        let mut d = Dict::new();
        self.rule.write(&mut d);
        d.with("base_lrs", Value::floats(&self.base_lrs))
            .with("last_epoch", self.last_epoch)
            .with("_step_count", self.step_count)
            .with("_is_initial", false)
            .with("_get_lr_called_within_step", false)
            .with("_last_lr", Value::floats(&self.last_lr))
            .into()
    }

    /// torch's `load_state_dict(..)`: every field from the state dict, which must be one of
    /// this scheduler's rule. On error nothing changes.
    pub fn load_state_dict(&mut self, state_dict: &Value) -> Result<()> {
        let loaded = self
            .parse(state_dict)
            .map_err(|msg| config(self.rule.name(), msg))?;
        *self = loaded;
        Ok(())
    }

    fn parse(&self, state_dict: &Value) -> Parse<LrScheduler> {
        let d = state_dict.expect("state dict", "a dict", Value::as_dict)?;
        let s = LrScheduler {
            rule: self.rule.read(d)?,
            base_lrs: d.floats("base_lrs")?,
            last_epoch: d.i64("last_epoch")?,
            step_count: d.i64("_step_count")?,
            last_lr: d.floats("_last_lr")?,
        };
        if s.last_lr.len() != s.base_lrs.len() {
            return Err(format!(
                "{} base_lrs but {} _last_lr",
                s.base_lrs.len(),
                s.last_lr.len()
            ));
        }
        Ok(s)
    }
}

/// torch's `SequentialLR`: scheduler `i` runs from milestone `i - 1` on, and at its milestone
/// restarts from its closed form at epoch 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialLr {
    schedulers: Vec<LrScheduler>,
    milestones: Vec<i64>,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl SequentialLr {
    /// torch's constructor (`last_epoch=-1`), from schedulers already built on `opt` in order:
    /// resets the groups to their `initial_lr`, undoes the schedulers' initial steps and takes
    /// the first scheduler's initial step again.
    pub fn new(
        mut schedulers: Vec<LrScheduler>,
        milestones: Vec<i64>,
        opt: &mut dyn LrGroups,
    ) -> Result<Self> {
        let err = |msg: String| config("SequentialLR", msg);
        if schedulers.is_empty() {
            return Err(err("expects at least one scheduler".into()));
        }
        if milestones.len() != schedulers.len() - 1 {
            return Err(err(format!(
                "expects one milestone fewer than schedulers, got {} schedulers and {} milestones",
                schedulers.len(),
                milestones.len()
            )));
        }
        for i in 0..opt.group_count() {
            let lr = opt
                .initial_lr(i)
                .ok_or_else(|| err(format!("param_groups[{i}] has no initial_lr")))?;
            opt.set_lr(i, lr);
        }
        for s in &mut schedulers {
            s.last_epoch -= 1;
        }
        schedulers[0].initial_step(opt)?;
        Ok(SequentialLr {
            last_lr: schedulers[0].last_lr.clone(),
            schedulers,
            milestones,
            last_epoch: 0,
        })
    }

    pub fn schedulers(&self) -> &[LrScheduler] {
        &self.schedulers
    }

    pub fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    /// `scheduler.step()`: the scheduler whose span holds the next epoch steps, or restarts
    /// from its closed form at epoch 0 on its milestone.
    pub fn step(&mut self, opt: &mut dyn LrGroups) -> Result<()> {
        self.last_epoch += 1;
        // bisect_right(milestones, last_epoch)
        let idx = self.milestones.partition_point(|&m| m <= self.last_epoch);
        let s = &mut self.schedulers[idx];
        if idx > 0 && self.milestones[idx - 1] == self.last_epoch {
            s.update_lr(opt, Some(0), false)?;
        } else {
            s.step(opt)?;
        }
        self.last_lr = s.last_lr.clone();
        Ok(())
    }

    /// torch's `state_dict()`: `_milestones`, `last_epoch`, `_last_lr` and each scheduler's
    /// state dict under `_schedulers`.
    pub fn state_dict(&self) -> Value {
        let schedulers = self.schedulers.iter().map(LrScheduler::state_dict);
        Dict::new()
            .with(
                "_milestones",
                Value::List(self.milestones.iter().map(|&m| m.into()).collect()),
            )
            .with("last_epoch", self.last_epoch)
            .with("_last_lr", Value::floats(&self.last_lr))
            .with("_schedulers", Value::List(schedulers.collect()))
            .into()
    }

    /// torch's `load_state_dict(..)`, each scheduler from its own entry. On error nothing
    /// changes.
    pub fn load_state_dict(&mut self, state_dict: &Value) -> Result<()> {
        let (mut loaded, saved) = self
            .parse(state_dict)
            .map_err(|msg| config("SequentialLR", msg))?;
        for (s, v) in loaded.schedulers.iter_mut().zip(saved) {
            s.load_state_dict(v)?;
        }
        *self = loaded;
        Ok(())
    }

    /// This schedule with a state dict's own fields, and its schedulers' state dicts.
    fn parse<'v>(&self, state_dict: &'v Value) -> Parse<(SequentialLr, &'v [Value])> {
        let d = state_dict.expect("state dict", "a dict", Value::as_dict)?;
        let saved = d
            .field("_schedulers")?
            .expect("_schedulers", "a list", Value::as_seq)?;
        let loaded = SequentialLr {
            schedulers: self.schedulers.clone(),
            milestones: d.ints("_milestones")?,
            last_epoch: d.i64("last_epoch")?,
            last_lr: d.floats("_last_lr")?,
        };
        if saved.len() != self.schedulers.len() || loaded.milestones.len() + 1 != saved.len() {
            return Err(format!(
                "{} schedulers and {} milestones saved, {} schedulers here",
                saved.len(),
                loaded.milestones.len(),
                self.schedulers.len()
            ));
        }
        Ok((loaded, saved))
    }
}

/// The schedule of a training run: one scheduler, or a warm-up chained to it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheduler {
    Single(LrScheduler),
    Sequential(SequentialLr),
}

impl Scheduler {
    /// torchvision's `train.py`: the `main` rule alone with `warmup_epochs == 0`, else
    /// `SequentialLR([LinearLR(start_factor=warmup_decay, total_iters=warmup_epochs), main],
    /// milestones=[warmup_epochs])`. (torchvision's cosine rule anneals over
    /// `epochs - warmup_epochs`: `main` says so itself.)
    pub fn with_linear_warmup(
        main: Rule,
        warmup_epochs: i64,
        warmup_decay: f64,
        opt: &mut dyn LrGroups,
    ) -> Result<Self> {
        if warmup_epochs <= 0 {
            return Ok(Scheduler::Single(LrScheduler::new(main, opt)?));
        }
        let warmup = Rule::Linear {
            start_factor: warmup_decay,
            end_factor: 1.0,
            total_iters: warmup_epochs,
        };
        let warmup = LrScheduler::new(warmup, opt)?;
        let main = LrScheduler::new(main, opt)?;
        let seq = SequentialLr::new(vec![warmup, main], vec![warmup_epochs], opt)?;
        Ok(Scheduler::Sequential(seq))
    }

    /// Once per epoch, after that epoch's optimizer steps.
    pub fn step(&mut self, opt: &mut dyn LrGroups) -> Result<()> {
        match self {
            Scheduler::Single(s) => s.step(opt),
            Scheduler::Sequential(s) => s.step(opt),
        }
    }

    pub fn last_lr(&self) -> &[f64] {
        match self {
            Scheduler::Single(s) => s.last_lr(),
            Scheduler::Sequential(s) => s.last_lr(),
        }
    }

    pub fn state_dict(&self) -> Value {
        match self {
            Scheduler::Single(s) => s.state_dict(),
            Scheduler::Sequential(s) => s.state_dict(),
        }
    }

    /// Restores a state dict of the same kind of schedule (as torchvision's `--resume` does
    /// after loading the optimizer's).
    pub fn load_state_dict(&mut self, state_dict: &Value) -> Result<()> {
        match self {
            Scheduler::Single(s) => s.load_state_dict(state_dict),
            Scheduler::Sequential(s) => s.load_state_dict(state_dict),
        }
    }
}

fn config(what: &str, msg: String) -> Error {
    Error::Config {
        what: what.into(),
        msg,
    }
}
