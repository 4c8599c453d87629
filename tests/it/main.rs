//! The integration tests, one crate (libtorch links once), one module per area.

/// libtorch decides once, at its first CUDA query, whether it has CUDA, and the tests seed and
/// run backwards (both ask) in parallel threads: libtorch_cuda is loaded (where there is a
/// driver, see `mobilenet::device::load_cuda`) before any test starts, as the CLI loads it
/// before its first query.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static LOAD_CUDA_FIRST: extern "C" fn() = {
    extern "C" fn load() {
        mobilenet::device::load_cuda();
    }
    load
};

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
mod trained;
mod weights_files;
mod weights_fuzz;
mod weights_limits;
mod weights_strict;
