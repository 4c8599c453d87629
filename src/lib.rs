//! MobileNet V1, V2 and V3 on libtorch through `tch`: torchvision/timm weights loaded as
//! downloaded, numerical parity with PyTorch, the four normalization layers, fast inference.
//!
//! Data flow, one module each: a weight file ([`weights`]) → a model ([`models`], built from the
//! layers in [`nn`]) → logits → ImageNet labels.

pub mod alloc;
pub mod bench;
pub mod card;
pub mod device;
pub mod error;
pub mod ffi;
pub mod file;
pub mod imagenet;
pub mod images;
pub mod info;
pub mod models;
pub mod nn;
pub mod parity;
pub mod pipeline;
pub mod preprocess;
pub mod shard;
pub mod train;
pub mod value;
pub mod weights;

pub use error::{Error, Result};
