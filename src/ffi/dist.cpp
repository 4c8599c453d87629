// libtorch's c10d, the collective library under torch.distributed, for data-parallel training
// under `torchrun`: a TCPStore for the rendezvous (the store torchrun's agent already hosts, or
// one that rank 0 starts, as `init_process_group(init_method="env://")` does) and a
// ProcessGroup over it (Gloo for CPU tensors; NCCL, where built, or Gloo for CUDA tensors), with
// the broadcast that DistributedDataParallel uses for the buffers,
// and a differentiable all-reduce (sum) for SyncBatchNorm: its backward all-reduces the incoming
// gradient, as SyncBatchNorm's backward all-reduces `sum_dy` and `sum_dy_xmu`; and c10d's
// Reducer, the engine under DistributedDataParallel, which averages the gradients in buckets
// whose all-reduce starts in the backward, as soon as the bucket's last gradient is ready.
// Every function reports a C++ exception (a timeout, a peer that went away) as a malloc'd
// message in `*err` and returns null or false.

#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <torch/csrc/autograd/custom_function.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "protect.h"

// `pg`: the Gloo backend. `group`: a ProcessGroup with Gloo for CPU tensors and NCCL (or, in a
// build without it or on the CPU, Gloo) for CUDA tensors, as `init_process_group` assembles one;
// every collective goes through it, to the backend of its tensors' device.
struct MnGroup {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
};

struct MnReducer {
  std::unique_ptr<c10d::Reducer> reducer;
};

namespace {

// `t` summed over the ranks, in place (a dense contiguous tensor).
void all_reduce_sum(MnGroup* g, at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  g->group->allreduce(ts)->wait();
}

// y = sum over the ranks of x; dL/dx = sum over the ranks of dL/dy (every rank's loss depends on
// every rank's x through y). The group outlives the graph: the caller keeps it for the step.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t group) {
    ctx->saved_data["group"] = group;
    at::Tensor y = x.contiguous().clone();
    all_reduce_sum(reinterpret_cast<MnGroup*>(group), y);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* g = reinterpret_cast<MnGroup*>(ctx->saved_data["group"].toInt());
    at::Tensor dx = grads[0].contiguous().clone();
    all_reduce_sum(g, dx);
    return {dx, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Joins the group of `world` processes as `rank`. `agent_store`: torchrun's agent hosts the store
// at addr:port (TORCHELASTIC_USE_AGENT_STORE=True), and every rank connects as a client under
// the prefix torch uses, `/worker/attempt_{restart}`; else rank 0 starts the store. `nccl_lib`
// (libmobilenet_nccl.so, see nccl.cpp), when not null: CUDA tensors go through NCCL
// (`init_process_group`'s default "cpu:gloo,cuda:nccl"), else through Gloo.
MnGroup* mn_dist_init(const char* addr, int port, int rank, int world, bool agent_store,
                      int restart, int64_t timeout_ms, const char* nccl_lib, char** err) {
  MN_PROTECT({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = !agent_store && rank == 0;
    opts.numWorkers = agent_store ? std::nullopt : std::optional<std::size_t>(world);
    opts.waitWorkers = !agent_store;
    opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(addr, opts);
    if (agent_store) {
      store = c10::make_intrusive<c10d::PrefixStore>(
          "/worker/attempt_" + std::to_string(restart), store);
    }
    store = c10::make_intrusive<c10d::PrefixStore>("mobilenet/", store);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    // torch.distributed's `_new_process_group_helper` for the default group (named "0").
    auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    pg->setSequenceNumberForGroup();
    group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, pg);
    if (nccl_lib != nullptr) {
      // As `_new_process_group_helper` builds the "cuda" entry, NCCL the default backend.
      void* lib = dlopen(nccl_lib, RTLD_NOW | RTLD_LOCAL);
      TORCH_CHECK(lib != nullptr, "cannot load c10d's NCCL backend: ", dlerror());
      using MakeNccl = c10d::Backend* (*)(const c10::intrusive_ptr<c10d::Store>*, int, int,
                                          int64_t, char**);
      auto make = reinterpret_cast<MakeNccl>(dlsym(lib, "mn_nccl_backend"));
      if (make == nullptr) {
        const char* why = dlerror();
        TORCH_CHECK(false, nccl_lib, " has no mn_nccl_backend: ", why != nullptr ? why : "");
      }
      char* nccl_err = nullptr;
      c10d::Backend* raw = make(&store, rank, world, timeout_ms, &nccl_err);
      if (raw == nullptr) {
        std::string message = nccl_err != nullptr ? nccl_err : "unknown C++ exception";
        std::free(nccl_err);
        TORCH_CHECK(false, message);
      }
      auto backend = c10::intrusive_ptr<c10d::Backend>::reclaim(raw);
      group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, backend);
      group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    } else {
      // Gloo takes CUDA tensors too (through host copies), as `init_process_group("gloo")`
      // registers it for both devices.
      group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, pg);
    }
    group->setGroupName("0");
    return new MnGroup{pg, group};
  })
  return nullptr;
}

void mn_dist_free(MnGroup* g) { delete g; }

// In place: `t` becomes rank `root`'s `t`.
bool mn_dist_broadcast(MnGroup* g, const at::Tensor* t, int root, char** err) {
  MN_PROTECT({
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    g->group->broadcast(ts, o)->wait();
    return true;
  })
  return false;
}

// A new tensor: the sum of every rank's `t`, differentiable (its gradient is the sum of every
// rank's gradient). Every rank must call it at the same point of its forward.
at::Tensor* mn_dist_all_reduce_autograd(MnGroup* g, const at::Tensor* t, char** err) {
  MN_PROTECT({ return new at::Tensor(AllReduceSum::apply(*t, reinterpret_cast<int64_t>(g))); })
  return nullptr;
}

// DistributedDataParallel's reducer over `params` (the parameters that require a gradient, in
// the model's order, named `names[i]`), built as DDP's constructor builds it with
// `find_unused_parameters=False` and `gradient_as_bucket_view=False`: the first iteration
// reduces one bucket after the whole backward; from the second forward on (`rebuild`), the
// buckets follow the order in which the first backward produced the gradients, the first of
// `first_cap` bytes and the others of `cap` (DDP: 1 MiB and `bucket_cap_mb` = 25, or both
// `bucket_cap_mb` when the user sets it).
MnReducer* mn_reducer_new(MnGroup* g, const at::Tensor* const* params, const char* const* names,
                          int64_t n, int64_t cap, int64_t first_cap, char** err) {
  MN_PROTECT({
    std::vector<at::Tensor> ps;
    std::unordered_map<size_t, std::string> param_names;
    for (int64_t i = 0; i < n; i++) {
      ps.push_back(*params[i]);
      param_names[static_cast<size_t>(i)] = names[i];
    }
    std::vector<bool> sparse(ps.size(), false);
    // DDP: `bucket_size_limits = [sys.maxsize]` for the first iteration, then reversed.
    auto [indices, limits] = c10d::compute_bucket_assignment_by_size(
        ps, {static_cast<size_t>(std::numeric_limits<int64_t>::max())}, sparse);
    std::reverse(indices.begin(), indices.end());
    auto reducer = std::make_unique<c10d::Reducer>(
        ps, std::move(indices), g->group, sparse, cap, /*find_unused_parameters=*/false,
        /*gradient_as_bucket_view=*/false, std::move(param_names), first_cap,
        /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
        std::vector<int64_t>{});
    return new MnReducer{std::move(reducer)};
  })
  return nullptr;
}

void mn_reducer_free(MnReducer* r) {
  try {
    delete r;
  } catch (...) {
    // ~Reducer may throw (noexcept(false)); the process is ending its training either way.
  }
}

// DDP's `_pre_forward` (with grad enabled): `prepare_for_forward`, then `_rebuild_buckets` (a
// collective: rank 0's bucket order is broadcast). `*rebuilt` says whether the buckets were
// rebuilt now (once, at the second forward).
bool mn_reducer_pre_forward(MnReducer* r, bool* rebuilt, char** err) {
  MN_PROTECT({
    r->reducer->prepare_for_forward();
    *rebuilt = r->reducer->rebuild_buckets();
    return true;
  })
  return false;
}

// DDP's `_post_forward`: the next backward's gradients are reduced.
bool mn_reducer_post_forward(MnReducer* r, char** err) {
  MN_PROTECT({
    r->reducer->prepare_for_backward({});
    return true;
  })
  return false;
}

// The buckets, in the order they are reduced, as indices into the reducer's `params` (`n` of
// them): `out` (of `cap` entries) holds, for each bucket, its length then its indices. Returns
// the entries needed (more than `cap`: call again with more).
int64_t mn_reducer_buckets(MnReducer* r, const at::Tensor* const* params, int64_t n, int64_t* out,
                           int64_t cap, char** err) {
  MN_PROTECT({
    std::unordered_map<const void*, int64_t> index;
    for (int64_t i = 0; i < n; i++) {
      index[params[i]->unsafeGetTensorImpl()] = i;
    }
    int64_t need = 0;
    auto put = [&](int64_t v) {
      if (need < cap) out[need] = v;
      need++;
    };
    for (const auto& bucket : r->reducer->get_grad_buckets(/*return_zero_tensors=*/false)) {
      const auto params_of = bucket.getParameters();
      put(static_cast<int64_t>(params_of.size()));
      for (const auto& p : params_of) {
        auto it = index.find(p.unsafeGetTensorImpl());
        put(it == index.end() ? -1 : it->second);
      }
    }
    return need;
  })
  return -1;
}

}  // extern "C"
