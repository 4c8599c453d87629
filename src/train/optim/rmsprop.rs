//! RMSprop, centered and with momentum optional, as `torch/optim/rmsprop.py`
//! (`_single_tensor_rmsprop`, not capturable). torchvision's classification recipe runs it with
//! `alpha=0.9, eps=0.0316` ([`RmsPropOptions::torchvision`]).

use tch::Tensor;

use super::{
    add_scaled_, addcdiv_, addcmul, addcmul_, check_non_negative, decayed_grad, needed,
    param_state, zeros_like, Algorithm, OptionFields, Step,
};
use crate::value::Parse;
use crate::Result;

/// `torch.optim.RMSprop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmsProp;

/// RMSprop's options besides `lr` and `weight_decay`; torch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsPropOptions {
    /// Smoothing of the squared-gradient average. Default `0.99`.
    pub alpha: f64,
    /// Added to the denominator. Default `1e-8`.
    pub eps: f64,
    /// Default `0`.
    pub momentum: f64,
    /// Normalize by the gradient's estimated variance rather than its second moment. Default
    /// `false`.
    pub centered: bool,
}

impl Default for RmsPropOptions {
    fn default() -> Self {
        RmsPropOptions {
            alpha: 0.99,
            eps: 1e-8,
            momentum: 0.0,
            centered: false,
        }
    }
}

param_state! {
    /// RMSprop's per-parameter state.
    pub struct RmsPropState {
        /// The parameter's own step count, a float32 as torch keeps it.
        pub step: f32,
        pub square_avg: Tensor,
        /// With `momentum > 0` only.
        pub momentum_buffer: Option<Tensor>,
        /// With `centered` only.
        pub grad_avg: Option<Tensor>,
    }
}

impl RmsPropOptions {
    /// torchvision's `references/classification/train.py` (`--opt rmsprop`):
    /// `RMSprop(..., momentum=args.momentum, eps=0.0316, alpha=0.9)`.
    pub fn torchvision(momentum: f64) -> Self {
        RmsPropOptions {
            alpha: 0.9,
            eps: 0.0316,
            momentum,
            centered: false,
        }
    }
}

impl Algorithm for RmsProp {
    const NAME: &'static str = "RMSprop";
    type Options = RmsPropOptions;
    type State = RmsPropState;

    fn update(s: &mut RmsPropState, step: Step<'_, RmsPropOptions>) -> Result<()> {
        let Step { lr, options: o, .. } = step;
        s.step += 1.0;
        let grad = decayed_grad(step.grad, step.param, step.weight_decay)?;
        let _ = s.square_avg.f_mul_scalar_(o.alpha)?;
        addcmul_(&mut s.square_avg, &grad, &grad, 1.0 - o.alpha)?;

        let mut avg = if o.centered {
            let grad_avg = needed(&mut s.grad_avg, "grad_avg")?;
            let _ = grad_avg.f_lerp_(&grad, 1.0 - o.alpha)?;
            addcmul(&s.square_avg, grad_avg, grad_avg, -1.0)?.f_sqrt_()?
        } else {
            s.square_avg.f_sqrt()?
        };
        let _ = avg.f_add_scalar_(o.eps)?;
        if o.momentum > 0.0 {
            let buf = needed(&mut s.momentum_buffer, "momentum_buffer")?;
            let _ = buf.f_mul_scalar_(o.momentum)?;
            addcdiv_(buf, &grad, &avg, 1.0)?;
            add_scaled_(step.param, buf, -lr)
        } else {
            addcdiv_(step.param, &grad, &avg, -lr)
        }
    }

    fn init(o: &RmsPropOptions, param: &Tensor) -> Result<RmsPropState> {
        Ok(RmsPropState {
            step: 0.0,
            square_avg: zeros_like(param)?,
            momentum_buffer: (o.momentum > 0.0).then(|| zeros_like(param)).transpose()?,
            grad_avg: o.centered.then(|| zeros_like(param)).transpose()?,
        })
    }

    fn check(o: &RmsPropOptions) -> Parse<()> {
        let checks = [
            ("epsilon", o.eps),
            ("momentum", o.momentum),
            ("alpha", o.alpha),
        ];
        for (what, value) in checks {
            check_non_negative(&format!("{what} value"), value)?;
        }
        Ok(())
    }

    fn options(o: &mut RmsPropOptions, fields: &mut dyn OptionFields) {
        fields.number("momentum", &mut o.momentum);
        fields.number("alpha", &mut o.alpha);
        fields.number("eps", &mut o.eps);
        fields.flag("centered", &mut o.centered);
    }
}
