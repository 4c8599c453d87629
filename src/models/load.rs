//! Building a model from a weight file, one path for every caller: the file is read once, the
//! configured architecture is built on the CPU in fp32 and loaded strictly, BatchNorm is folded
//! (when asked) still in fp32, and only then is the model moved and cast
//! ([`crate::device::Placement`]).

use super::{Model, ModelConfig};
use crate::device::{Placement, Precision};
use crate::weights::{self, ArchGuess, LoadOptions, StateDict};
use crate::{Error, Result};
use std::path::Path;
use tch::Device;

impl ModelConfig {
    /// The configuration of the architecture [`weights::detect_architecture`] found, with its
    /// width and classes; `None` for timm's `h` variants (a `conv_head` this crate does not
    /// build).
    pub fn from_guess(guess: &ArchGuess) -> Option<ModelConfig> {
        (!guess.conv_head).then(|| ModelConfig {
            width_mult: guess.width_mult,
            num_classes: guess.num_classes,
            ..ModelConfig::new(guess.arch)
        })
    }
}

impl Model {
    /// Builds the model on the CPU in fp32 and loads a weight file strictly (any format
    /// [`weights::read`] takes). Fold here, before [`Model::to`] casts to a reduced precision.
    pub fn load(config: ModelConfig, path: &Path) -> Result<Model> {
        Model::from_file_with(config, path, &Placement::default())
    }

    /// [`Model::load`], then moves the model to `device` in `precision`.
    pub fn from_file(
        config: ModelConfig,
        path: &Path,
        device: Device,
        precision: Precision,
    ) -> Result<Model> {
        let placement = Placement {
            device,
            precision,
            fold: false,
        };
        Model::from_file_with(config, path, &placement)
    }

    /// Reads a weight file once, loads it strictly into `config`'s architecture on the CPU in
    /// fp32, then [`Model::place`]s it. The precision is checked against the device before the
    /// file is read.
    pub fn from_file_with(
        config: ModelConfig,
        path: &Path,
        placement: &Placement,
    ) -> Result<Model> {
        placement.precision.check(placement.device)?;
        let mut model = {
            let sd = weights::read(path)?;
            Model::loaded(config, &sd, path)?
            // The file's tensors are freed here, before folding and casting copy the weights.
        };
        model.place(placement)?;
        Ok(model)
    }

    /// [`Model::from_file_with`] for a state dict already read from `path` (e.g. to pick the
    /// configuration from what the file holds); `path` names the file in errors.
    pub fn from_state_dict(
        config: ModelConfig,
        sd: &StateDict,
        path: &Path,
        placement: &Placement,
    ) -> Result<Model> {
        placement.precision.check(placement.device)?;
        let mut model = Model::loaded(config, sd, path)?;
        model.place(placement)?;
        Ok(model)
    }

    /// Folds BatchNorm when `placement.fold` (in the current, full precision), then moves the
    /// model to `placement.device` and casts it to `placement.precision`.
    pub fn place(&mut self, placement: &Placement) -> Result<()> {
        if placement.fold {
            self.fold_batch_norm()?;
        }
        self.to(placement.device, placement.precision)
    }

    /// `config`'s architecture on the CPU in fp32 with `sd` loaded strictly. When the file
    /// holds another known architecture, width or class count, the error says which and how to
    /// ask for it.
    fn loaded(config: ModelConfig, sd: &StateDict, path: &Path) -> Result<Model> {
        let model = Model::new(config, Device::Cpu)?;
        weights::load_into(&model.vs, sd, &LoadOptions::default()).map_err(|e| {
            match weights::detect_architecture(sd) {
                Some(g) => match ModelConfig::from_guess(&g) {
                    Some(held) if !same_shape(&held, &model.config) => {
                        Error::file(path, holds_other(path, &g, &held, &model.config, &e))
                    }
                    _ => e,
                },
                None => e,
            }
        })?;
        Ok(model)
    }
}

/// Whether two configurations agree on what [`weights::detect_architecture`] reads from a file.
fn same_shape(a: &ModelConfig, b: &ModelConfig) -> bool {
    a.arch == b.arch && a.width_mult == b.width_mult && a.num_classes == b.num_classes
}

/// "holds X (width, classes), not the requested Y (...): pass --arch ...", then the load error
/// (without its own leading path: the message is already about `path`).
fn holds_other(
    path: &Path,
    guess: &ArchGuess,
    held: &ModelConfig,
    asked: &ModelConfig,
    e: &Error,
) -> String {
    let e = e.to_string();
    let e = e
        .strip_prefix(&format!("{}: ", path.display()))
        .unwrap_or(&e);
    format!(
        "holds {} (width {}, {} classes), not the requested {} (width {}, {} classes): pass \
         --arch {} --width-mult {} --num-classes {}\n{e}",
        guess.arch,
        guess.width_mult,
        guess.num_classes,
        asked.arch,
        asked.width_mult,
        asked.num_classes,
        held.arch,
        held.width_mult,
        held.num_classes
    )
}
