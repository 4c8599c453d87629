// A whole forward pass compiled by libtorch's TorchScript with the oneDNN Graph fuser (LLGA), the
// `torch.jit.enable_onednn_fusion(True)` + `torch.jit.freeze` path of PyTorch: the convolutions,
// their activations and residual adds become oneDNN Graph partitions compiled once per input
// shape, with activations kept in oneDNN's own layouts between them. The module is built from
// TorchScript source that src/models/graph.rs writes from a folded model, with the model's own
// tensors as its parameters. Errors come back as in shim.cpp.

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include "protect.h"

extern "C" {

// Builds `forward` from `source` over parameters `names[i]` = `tensors[i]`, freezes it (the
// parameters become constants). Returns an owned module; it runs fused once
// `mn_enable_onednn_fusion(true)` has turned the process-wide fuser on.
void* mn_graph_create(const char* source, const char* const* names,
                      const at::Tensor* const* tensors, size_t n, char** err) {
  MN_PROTECT({
    torch::jit::Module module("__torch__.mobilenet.Graph");
    for (size_t i = 0; i < n; ++i) {
      module.register_parameter(names[i], tensors[i]->detach(), false);
    }
    module.define(source);
    module.eval();
    return static_cast<void*>(new torch::jit::Module(torch::jit::freeze(module)));
  })
  return nullptr;
}

at::Tensor* mn_graph_forward(void* module, const at::Tensor* x, char** err) {
  MN_PROTECT({
    c10::IValue out = static_cast<torch::jit::Module*>(module)->forward({*x});
    return new at::Tensor(out.toTensor());
  })
  return nullptr;
}

// `torch.jit.enable_onednn_fusion(enabled)`: the oneDNN Graph fuser, for the whole process.
void mn_enable_onednn_fusion(bool enabled) { torch::jit::RegisterLlgaFuseGraph::setEnabled(enabled); }

void mn_graph_free(void* module) { delete static_cast<torch::jit::Module*>(module); }

}  // extern "C"
