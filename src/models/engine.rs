//! A folded model's forward as direct oneDNN calls ([`crate::ffi::Engine`], src/ffi/engine.cpp):
//! the same main path as the compiled graph ([`super::graph::Program`]), recorded op by op,
//! then pooling and the classifier. No TorchScript or ATen runs between the layers, and
//! activations stay in oneDNN's blocked layouts from the first layer to the last.

use super::graph::{Program, Step};
use crate::ffi::Engine;
use crate::nn::{Activation, SqueezeExcitation, Unit};
use crate::Result;

/// Records `program` into an engine computing in fp32 or `bf16`; `None` when a conv has no
/// folded weights, or the engine was built without oneDNN.
pub fn build(program: &Program<'_>, bf16: bool) -> Result<Option<Engine>> {
    if !crate::ffi::engine_available() {
        return Ok(None);
    }
    // The engine's squeeze-excitation is torchvision's: ReLU, then hardsigmoid.
    if SqueezeExcitation::ACTIVATION != Activation::Relu
        || SqueezeExcitation::SCALE_ACTIVATION != Activation::Hardsigmoid
    {
        return Ok(None);
    }
    let mut engine = Engine::new(bf16)?;
    for step in &program.steps {
        match step {
            Step::Unit(Unit::Conv(unit)) => {
                let Some(f) = unit.folded() else {
                    return Ok(None);
                };
                let spec = unit.spec();
                engine.conv(&f.weight, &f.bias, spec.geometry(), spec.activation)?;
            }
            Step::Unit(Unit::SqueezeExcite(se)) => {
                let [w1, b1, w2, b2] = se.parameters();
                engine.squeeze_excite(w1, b1, w2, b2)?;
            }
            Step::ResidualStart => engine.residual_start(),
            Step::ResidualEnd => engine.residual_end(),
        }
    }
    engine.pool();
    for layer in &program.head {
        engine.linear(layer.weight, layer.bias, layer.activation)?;
    }
    Ok(Some(engine))
}
