//! Layers: the four normalizations of a feature map, the norm choice the model builders take,
//! and the conv-norm-activation unit that MobileNets are made of.

pub mod accel;
pub mod batch_norm;
pub mod conv;
pub mod group_norm;
pub mod instance_norm;
pub mod layer_norm;
pub mod norm;
pub mod norm_base;

pub use batch_norm::{BatchNorm, BatchNormConfig};
pub use group_norm::{GroupNorm, GroupNormConfig};
pub use instance_norm::{InstanceNorm, InstanceNormConfig};
pub use layer_norm::{LayerNorm, LayerNormConfig};
pub use norm::{Norm2d, NormKind};
pub use norm_base::{NormBase, NormBaseConfig};
