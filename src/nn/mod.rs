//! Layers: the four normalizations of a feature map, the norm choice the model builders take,
//! the activations, squeeze-excitation, the conv-norm-activation unit that MobileNets are made
//! of, and the block description every MobileNet block is built from. Nothing here knows the
//! architectures (`crate::models`).

pub mod accel;
pub mod activation;
pub mod batch_norm;
pub mod block;
pub mod conv;
pub mod group_norm;
pub mod instance_norm;
pub mod layer_norm;
pub mod norm;
pub mod norm_base;
pub mod squeeze_excitation;
pub mod sync_batch_norm;

pub use activation::Activation;
pub use batch_norm::{BatchNorm, BatchNormConfig};
pub use block::{Block, BlockSpec, Unit, UnitSpec};
pub use conv::{ConvNormAct, ConvSpec};
pub use group_norm::{GroupNorm, GroupNormConfig};
pub use instance_norm::{InstanceNorm, InstanceNormConfig};
pub use layer_norm::{LayerNorm, LayerNormConfig};
pub use norm::{Norm2d, NormKind};
pub use norm_base::{NormBase, NormBaseConfig};
pub use squeeze_excitation::SqueezeExcitation;
