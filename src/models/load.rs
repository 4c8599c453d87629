//! Building a model from a weight file.

use super::{Model, ModelConfig};
use crate::device::Precision;
use crate::weights::{self, LoadOptions};
use crate::Result;
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
        let mut model = Model::new(config, Device::Cpu)?;
        let sd = weights::read(path)?;
        weights::load_into(&model.vs, &sd, &LoadOptions::default())?;
        model.to(device, precision)?;
        Ok(model)
    }
}
