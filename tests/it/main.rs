//! The integration tests, one crate (libtorch links once), one module per area.

mod card_cli;
mod classify_cli;
mod classify_memory;
mod classify_pil;
mod classify_preprocess;
mod common;
mod convert_cli;
mod decode_pil;
mod hostile_cli;
mod hostile_files;
mod info;
mod models;
mod norm_api;
mod norm_errors;
mod norm_parity;
mod optimizations;
mod parity_cli;
mod pth_writer;
mod shard_cli;
mod train_cli;
mod train_dist;
mod train_optim;
mod weights_files;
mod weights_fuzz;
mod weights_limits;
mod weights_strict;
