//! Loss scaling for fp16 training, as `torch.amp.GradScaler` (`torch/amp/grad_scaler.py`) does it
//! with its defaults: the loss is multiplied by the scale (initially 2^16) before backward; before
//! the optimizer steps, the gradients are multiplied by the reciprocal (computed in float64, then
//! rounded to float32, as torch does) and checked for infinities and NaNs; a step with any is
//! skipped and the scale halved; after 2000 steps in a row without, the scale doubles
//! (`torch._amp_update_scale_`). The state dict is torch's (`scale`, `growth_factor`,
//! `backoff_factor`, `growth_interval`, `_growth_tracker`).

use crate::value::{Dict, Value};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// torch's `GradScaler` with its default settings.
#[derive(Debug)]
pub struct GradScaler {
    /// float32, shape `[]`.
    scale: Tensor,
    /// int32, shape `[]`: steps since the last skipped one.
    growth_tracker: Tensor,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
}

impl GradScaler {
    pub fn new(device: Device) -> Result<GradScaler> {
        Ok(GradScaler {
            scale: Tensor::f_full([], 65536.0, (Kind::Float, device))?,
            growth_tracker: Tensor::f_full([], 0, (Kind::Int, device))?,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        })
    }

    /// The current scale.
    pub fn scale_value(&self) -> Result<f64> {
        Ok(self.scale.f_double_value(&[])?)
    }

    /// `scaler.scale(loss)`: `loss * scale`.
    pub fn scale(&self, loss: &Tensor) -> Result<Tensor> {
        Ok(loss.f_mul(&self.scale.f_to_device(loss.device())?)?)
    }

    /// `scaler.unscale_(optimizer)`: multiplies every gradient by `1 / scale` in place; whether
    /// any was infinite or NaN (then the step must be skipped).
    pub fn unscale(&self, params: &[Tensor]) -> Result<bool> {
        let inv = self
            .scale
            .f_to_kind(Kind::Double)?
            .f_reciprocal()?
            .f_to_kind(Kind::Float)?;
        let mut found_inf = false;
        tch::no_grad(|| -> Result<()> {
            for p in params {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                if !found_inf {
                    found_inf = g.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0;
                }
                let _ = g.f_mul_(&inv.f_to_device(g.device())?)?;
            }
            Ok(())
        })?;
        Ok(found_inf)
    }

    /// `scaler.update()` after a step (skipped or not).
    pub fn update(&mut self, found_inf: bool) -> Result<()> {
        let found = Tensor::f_full(
            [],
            f64::from(u8::from(found_inf)),
            (Kind::Float, self.scale.device()),
        )?;
        let _ = self.scale.f_internal_amp_update_scale_(
            &self.growth_tracker,
            &found,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        )?;
        Ok(())
    }

    /// `scaler.state_dict()`.
    pub fn state_dict(&self) -> Result<Value> {
        Ok(Value::Dict(
            Dict::new()
                .with("scale", Value::Float(self.scale.f_double_value(&[])?))
                .with("growth_factor", Value::Float(self.growth_factor))
                .with("backoff_factor", Value::Float(self.backoff_factor))
                .with("growth_interval", Value::Int(self.growth_interval))
                .with(
                    "_growth_tracker",
                    Value::Int(self.growth_tracker.f_int64_value(&[])?),
                ),
        ))
    }

    /// `scaler.load_state_dict(..)`.
    pub fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        let bad = |msg: &str| Error::config("GradScaler state", msg.to_string());
        let d = state.as_dict().ok_or_else(|| bad("not a dict"))?;
        let num = |k: &str| d.get(k).and_then(Value::as_f64).ok_or_else(|| bad(k));
        let scale = num("scale")?;
        let tracker = d
            .get("_growth_tracker")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("_growth_tracker"))?;
        self.growth_factor = num("growth_factor")?;
        self.backoff_factor = num("backoff_factor")?;
        self.growth_interval = d
            .get("growth_interval")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("growth_interval"))?;
        let _ = self.scale.f_fill_(scale)?;
        let _ = self.growth_tracker.f_fill_(tracker)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_infinite_gradient_skips_and_halves() {
        let mut scaler = GradScaler::new(Device::Cpu).unwrap();
        let p = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        scaler
            .scale(&(&p * 2.0).sum(Kind::Float))
            .unwrap()
            .backward();
        // d/dp of 65536 * 2 * p: 131072, unscaled back to 2.
        assert!(!scaler.unscale(std::slice::from_ref(&p)).unwrap());
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), [2.0, 2.0]);
        scaler.update(false).unwrap();
        assert_eq!(scaler.scale_value().unwrap(), 65536.0);
        let _ = p.grad().fill_(f64::INFINITY);
        assert!(scaler.unscale(std::slice::from_ref(&p)).unwrap());
        scaler.update(true).unwrap();
        assert_eq!(scaler.scale_value().unwrap(), 32768.0);
        let state = scaler.state_dict().unwrap();
        let mut other = GradScaler::new(Device::Cpu).unwrap();
        other.load_state_dict(&state).unwrap();
        assert_eq!(other.scale_value().unwrap(), 32768.0);
    }
}
