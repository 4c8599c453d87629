// libtorch's c10d, the collective library under torch.distributed, for data-parallel training
// under `torchrun`: a TCPStore for the rendezvous (the store torchrun's agent already hosts, or
// one that rank 0 starts, as `init_process_group("gloo", init_method="env://")` does) and a
// ProcessGroupGloo over it, with the all-reduce and broadcast that DistributedDataParallel uses,
// and a differentiable all-reduce (sum) for SyncBatchNorm: its backward all-reduces the incoming
// gradient, as SyncBatchNorm's backward all-reduces `sum_dy` and `sum_dy_xmu`.
// Every function reports a C++ exception (a timeout, a peer that went away) as a malloc'd
// message in `*err` and returns null or false.

#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <string>
#include <vector>

#include "protect.h"

struct MnGroup {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

namespace {

// `t` summed over the ranks, in place (a dense contiguous CPU tensor, as Gloo wants).
void all_reduce_sum(MnGroup* g, at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  g->pg->allreduce(ts)->wait();
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
// the prefix torch uses, `/worker/attempt_{restart}`; else rank 0 starts the store.
MnGroup* mn_dist_init(const char* addr, int port, int rank, int world, bool agent_store,
                      int restart, int64_t timeout_ms, char** err) {
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
    return new MnGroup{pg};
  })
  return nullptr;
}

void mn_dist_free(MnGroup* g) { delete g; }

// In place: `t` becomes the sum over the ranks (op 0), or rank `root`'s `t` (op 1).
bool mn_dist_collective(MnGroup* g, int op, const at::Tensor* t, int root, char** err) {
  MN_PROTECT({
    std::vector<at::Tensor> ts{*t};
    c10::intrusive_ptr<c10d::Work> work;
    if (op == 0) {
      work = g->pg->allreduce(ts);
    } else {
      c10d::BroadcastOptions o;
      o.rootRank = root;
      work = g->pg->broadcast(ts, o);
    }
    work->wait();
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

}  // extern "C"
