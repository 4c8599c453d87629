// c10d's NCCL backend (ProcessGroupNCCL, in libtorch_cuda), built apart from the shim into
// libmobilenet_nccl.so, so that the binary does not link libtorch_cuda and its CUDA libraries
// (cuBLAS, cuDNN, NCCL: 0.3 s and 350 MB to load on a machine without a GPU). dist.cpp loads
// it with dlopen when a data-parallel run puts its tensors on CUDA.

#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstdint>

#include "protect.h"

extern "C" {

// The "cuda" backend of the default group, as torch.distributed's `_new_process_group_helper`
// builds it: a prefix store of its own over `store`, the group's timeout. Returns an owned
// reference (for `intrusive_ptr::reclaim`), or null with the message in `*err`.
__attribute__((visibility("default"))) c10d::Backend* mn_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>* store, int rank, int world, int64_t timeout_ms,
    char** err) {
  MN_PROTECT({
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        c10::make_intrusive<c10d::PrefixStore>("cuda/", *store), rank, world, options);
    backend->setSequenceNumberForGroup();
    return c10::intrusive_ptr<c10d::Backend>(std::move(backend)).release();
  })
  return nullptr;
}

}  // extern "C"
