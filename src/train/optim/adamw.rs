//! AdamW, Adam with decoupled weight decay, as `torch/optim/adamw.py` runs it: `Adam` with
//! `decoupled_weight_decay=True`, `torch/optim/adam.py` (`_single_tensor_adam`, not capturable),
//! amsgrad optional.

use tch::Tensor;

use super::{
    addcdiv_, addcmul_, check_non_negative, needed, param_state, zeros_like, Algorithm,
    OptionFields, Step,
};
use crate::value::Parse;
use crate::Result;

/// `torch.optim.AdamW`. Its default `weight_decay` is `1e-2` (the group's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdamW;

/// AdamW's options besides `lr` and `weight_decay`; torch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWOptions {
    /// Decay of the first and second moment averages. Default `(0.9, 0.999)`.
    pub betas: (f64, f64),
    /// Added to the denominator. Default `1e-8`.
    pub eps: f64,
    /// Normalize by the largest second moment seen so far. Default `false`.
    pub amsgrad: bool,
}

impl Default for AdamWOptions {
    fn default() -> Self {
        AdamWOptions {
            betas: (0.9, 0.999),
            eps: 1e-8,
            amsgrad: false,
        }
    }
}

param_state! {
    /// AdamW's per-parameter state.
    pub struct AdamWState {
        /// The parameter's own step count, a float32 as torch keeps it.
        pub step: f32,
        pub exp_avg: Tensor,
        pub exp_avg_sq: Tensor,
        /// With `amsgrad` only.
        pub max_exp_avg_sq: Option<Tensor>,
    }
}

impl Algorithm for AdamW {
    const NAME: &'static str = "AdamW";
    type Options = AdamWOptions;
    type State = AdamWState;

    fn update(s: &mut AdamWState, step: Step<'_, AdamWOptions>) -> Result<()> {
        let Step {
            lr,
            options: o,
            grad,
            ..
        } = step;
        let (beta1, beta2) = o.betas;
        s.step += 1.0;
        if step.weight_decay != 0.0 {
            let _ = step.param.f_mul_scalar_(1.0 - lr * step.weight_decay)?;
        }
        let _ = s.exp_avg.f_lerp_(grad, 1.0 - beta1)?;
        let _ = s.exp_avg_sq.f_mul_scalar_(beta2)?;
        addcmul_(&mut s.exp_avg_sq, grad, grad, 1.0 - beta2)?;

        let t = f64::from(s.step);
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        let second = if o.amsgrad {
            // The largest second moment so far normalizes the step.
            let max = needed(&mut s.max_exp_avg_sq, "max_exp_avg_sq")?;
            let _ = max.f_maximum_out(max, &s.exp_avg_sq)?;
            &*max
        } else {
            &s.exp_avg_sq
        };
        let mut denom = second.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?;
        let _ = denom.f_add_scalar_(o.eps)?;
        addcdiv_(step.param, &s.exp_avg, &denom, -step_size)
    }

    fn init(o: &AdamWOptions, param: &Tensor) -> Result<AdamWState> {
        Ok(AdamWState {
            step: 0.0,
            exp_avg: zeros_like(param)?,
            exp_avg_sq: zeros_like(param)?,
            max_exp_avg_sq: o.amsgrad.then(|| zeros_like(param)).transpose()?,
        })
    }

    fn check(o: &AdamWOptions) -> Parse<()> {
        check_non_negative("epsilon value", o.eps)?;
        for (i, beta) in [o.betas.0, o.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!("Invalid beta parameter at index {i}: {beta}"));
            }
        }
        Ok(())
    }

    fn options(o: &mut AdamWOptions, fields: &mut dyn OptionFields) {
        fields.pair("betas", &mut o.betas);
        fields.number("eps", &mut o.eps);
        fields.flag("amsgrad", &mut o.amsgrad);
    }
}
