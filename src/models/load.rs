//! Building a model from a weight file.

use super::{Model, ModelConfig};
use crate::device::Precision;
use crate::weights::{self, LoadOptions};
use crate::{Error, Result};
use tch::Device;

impl Model {
    /// Builds the model on the CPU, loads a weight file strictly (any format
    /// [`weights::read`] takes), then moves it to `device` in `precision`.
    pub fn from_file(
        config: ModelConfig,
        path: &std::path::Path,
        device: Device,
        precision: Precision,
    ) -> Result<Model> {
        precision.check(device)?;
        let mut model = Model::load(config, path)?;
        model.to(device, precision)?;
        Ok(model)
    }

    /// Builds the model on the CPU in fp32 and loads a weight file strictly. Fold here, before
    /// [`Model::to`] casts to a reduced precision.
    pub fn load(config: ModelConfig, path: &std::path::Path) -> Result<Model> {
        let model = Model::new(config, Device::Cpu)?;
        let sd = weights::read(path)?;
        weights::load_into(&model.vs, &sd, &LoadOptions::default()).map_err(|e| {
            // Say what the file does hold when it is another known architecture.
            match weights::detect_architecture(&sd) {
                Some(g) => Error::file(
                    path,
                    format!(
                        "holds {} (width {}, {} classes), not the requested {} (width {}, {} \
                         classes): pass --arch {} --width-mult {} --num-classes {}\n{e}",
                        g.arch,
                        g.width_mult,
                        g.num_classes,
                        model.config.arch,
                        model.config.width_mult,
                        model.config.num_classes,
                        g.arch,
                        g.width_mult,
                        g.num_classes
                    ),
                ),
                None => e,
            }
        })?;
        Ok(model)
    }
}
