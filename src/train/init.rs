//! Initial weights for training from scratch, as the reference implementations draw them:
//! torchvision's MobileNet V2/V3 constructors (convolutions `kaiming_normal_(mode="fan_out")`,
//! biases 0, norm weights 1 and biases 0, linear layers `normal_(0, 0.01)`), and timm's
//! `_init_weight_goog` for V1 (convolutions `normal_(0, sqrt(2 / fan_out))` with
//! `fan_out = k * k * out_channels / groups`, linear layers `uniform_(-1/sqrt(out), 1/sqrt(out))`).
//!
//! The distributions are the reference's; the draws come from libtorch's generator (seed it
//! first), not from PyTorch's sequence of calls, so the numbers themselves differ.

use crate::models::{Arch, Model};
use crate::Result;

/// Re-initializes every parameter of `model` in place (running statistics are left as built:
/// mean 0, variance 1, no batches tracked).
pub fn reference_init(model: &Model) -> Result<()> {
    let timm = model.config().arch == Arch::MobilenetV1;
    let vars = model.var_store().variables();
    let norm_ptrs = model.network().norm_parameter_ptrs();
    tch::no_grad(|| -> Result<()> {
        // In module order, so that a seed gives the same weights every time.
        for (name, _) in model.network().spec().variables(&model.config().norm) {
            let Some(t) = vars.get(&name) else { continue };
            let mut t = t.shallow_clone();
            if crate::weights::is_norm_buffer(&name) {
                continue;
            }
            let size = t.size();
            if norm_ptrs.contains(&(t.data_ptr() as usize)) {
                if name.ends_with("weight") {
                    let _ = t.f_fill_(1.0)?;
                } else {
                    let _ = t.f_zero_()?;
                }
            } else if name.ends_with("bias") {
                let _ = t.f_zero_()?;
            } else if size.len() == 4 {
                let (out, per_group_in, k) = (size[0], size[1], size[2] * size[3]);
                // torch's fan_out is out * k * k; timm divides by the groups (a depthwise conv,
                // with one input channel per group, has `out` groups).
                let fan_out = if timm && per_group_in == 1 {
                    k
                } else {
                    out * k
                };
                let std = (2.0 / fan_out as f64).sqrt();
                let _ = t.f_normal_(0.0, std)?;
            } else if size.len() == 2 {
                if timm {
                    let r = 1.0 / (size[0] as f64).sqrt();
                    let _ = t.f_uniform_(-r, r)?;
                } else {
                    let _ = t.f_normal_(0.0, 0.01)?;
                }
            }
        }
        Ok(())
    })
}
