//! Stochastic gradient descent with momentum, dampening and Nesterov momentum, as
//! `torch/optim/sgd.py` (`_single_tensor_sgd`).

use tch::Tensor;

use super::{
    add_scaled, add_scaled_, check_non_negative, copy, decayed_grad, param_state, Algorithm,
    OptionFields, Step,
};
use crate::value::Parse;
use crate::Result;

/// `torch.optim.SGD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sgd;

param_state! {
    /// SGD's per-parameter state.
    pub struct SgdState {
        /// With `momentum != 0`, from the parameter's first step on (torch's `momentum_buffer`,
        /// `None` until then).
        pub momentum_buffer: Option<Tensor>,
    }
}

/// SGD's options besides `lr` and `weight_decay`; torch's defaults (all off).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SgdOptions {
    pub momentum: f64,
    pub dampening: f64,
    /// Needs `momentum > 0` and `dampening == 0`.
    pub nesterov: bool,
}

impl Algorithm for Sgd {
    const NAME: &'static str = "SGD";
    type Options = SgdOptions;
    type State = SgdState;

    fn update(s: &mut SgdState, step: Step<'_, SgdOptions>) -> Result<()> {
        let o = step.options;
        let mut grad = decayed_grad(step.grad, step.param, step.weight_decay)?;
        if o.momentum != 0.0 {
            let buf = match &mut s.momentum_buffer {
                Some(buf) => {
                    let _ = buf.f_mul_scalar_(o.momentum)?;
                    add_scaled_(buf, &grad, 1.0 - o.dampening)?;
                    buf
                }
                // The first step's buffer is the gradient itself: `grad.detach().clone()`.
                none => none.insert(copy(&grad)?),
            };
            grad = if o.nesterov {
                add_scaled(&grad, buf, o.momentum)?
            } else {
                buf.shallow_clone()
            };
        }
        add_scaled_(step.param, &grad, -step.lr)
    }

    fn init(_: &SgdOptions, _: &Tensor) -> Result<SgdState> {
        Ok(SgdState {
            momentum_buffer: None,
        })
    }

    fn check(o: &SgdOptions) -> Parse<()> {
        check_non_negative("momentum value", o.momentum)?;
        if o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0) {
            return Err("Nesterov momentum requires a momentum and zero dampening".into());
        }
        Ok(())
    }

    fn options(o: &mut SgdOptions, fields: &mut dyn OptionFields) {
        fields.number("momentum", &mut o.momentum);
        fields.number("dampening", &mut o.dampening);
        fields.flag("nesterov", &mut o.nesterov);
    }
}
