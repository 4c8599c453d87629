//! Training pieces that follow `torch.optim` exactly: optimizers over parameter groups
//! ([`optim`]: SGD, AdamW, RMSprop), the groups by weight decay that torchvision's reference
//! builds ([`groups`]), learning-rate schedules stepped per epoch ([`schedule`]), and their state
//! as plain data in the shape of torch's `state_dict()`s ([`crate::value`]), so that a resumed
//! run continues exactly.

pub mod amp;
pub mod augment;
pub mod curves;
pub mod data;
pub mod dist;
pub mod groups;
pub mod init;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use crate::value::{Dict, Key, Value};
pub use groups::{set_weight_decay, DecayGroup, DecayKind};
pub use metrics::EpochMetrics;
pub use optim::{
    AdamW, AdamWOptions, AdamWState, Algorithm, Optimize, Optimizer, ParamGroup, RmsProp,
    RmsPropOptions, RmsPropState, Sgd, SgdOptions, SgdState, Step,
};
pub use schedule::{LrGroups, LrScheduler, Rule, Scheduler, SequentialLr};
