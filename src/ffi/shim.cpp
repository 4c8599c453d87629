// A fused CPU inference kernel that libtorch registers but tch 0.24 does not bind: oneDNN's
// `mkldnn::_convolution_pointwise` (a convolution with its activation, or its residual add, fused
// as a post-op). Every call goes through libtorch's dispatcher with the op's registered schema,
// exactly as `torch.ops.mkldnn._convolution_pointwise(...)` does from Python; nothing here
// reimplements a kernel.
//
// Tensors cross the boundary as tch's `C_tensor`, which is `at::Tensor*`. Every function reports
// a C++ exception as a malloc'd message in `*err` (freed with `mn_free_error`) and returns null.

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addcdiv.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/hardtanh.h>

#include <dlfcn.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "mn_ffi.h"
#include "protect.h"

namespace {

c10::IValue optional_tensor(const at::Tensor* t) {
  return t == nullptr ? c10::IValue() : c10::IValue(*t);
}

c10::List<std::optional<at::Scalar>> scalars(const double* values, size_t n) {
  c10::List<std::optional<at::Scalar>> list;
  for (size_t i = 0; i < n; ++i) {
    list.push_back(at::Scalar(values[i]));
  }
  return list;
}

c10::OperatorHandle op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

}  // namespace

extern "C" {

void mn_free_error(char* err) { std::free(err); }

// Whether this libtorch registers the fused convolution with a CPU kernel (builds without oneDNN
// do not).
bool mn_conv_pointwise_available() {
  try {
    for (const char* overload : {"", "binary"}) {
      auto handle = c10::Dispatcher::singleton().findOp({"mkldnn::_convolution_pointwise", overload});
      if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
        return false;
      }
    }
    return true;
  } catch (...) {
    return false;
  }
}

// With `other` null: Y = act(conv2d(X, W, B)), where `attr` is "none", "relu", "hardtanh"
// (scalars: min, max) or "hardswish", applied by oneDNN as a post-op of the convolution.
// With `other`: Y = conv2d(X, W, B) + other, the add fused as a binary post-op (`attr` unused).
// W may be a dense tensor or a weight pre-reordered by `mkldnn_reorder_conv2d_weight`.
// `geometry` holds padding, stride and dilation (the same along both spatial dims) and groups.
at::Tensor* mn_conv_pointwise(const at::Tensor* x, const at::Tensor* other, const at::Tensor* w,
                              const at::Tensor* b, const MnConvGeometry* geometry, const char* attr,
                              const double* attr_scalars, size_t n_scalars, char** err) {
  MN_PROTECT({
    static const c10::OperatorHandle unary = op("mkldnn::_convolution_pointwise", "");
    static const c10::OperatorHandle binary = op("mkldnn::_convolution_pointwise", "binary");
    torch::jit::Stack stack;
    stack.reserve(13);
    stack.emplace_back(*x);
    if (other != nullptr) {
      stack.emplace_back(*other);
    }
    stack.emplace_back(*w);
    stack.push_back(optional_tensor(b));
    stack.emplace_back(std::vector<int64_t>(2, geometry->padding));
    stack.emplace_back(std::vector<int64_t>(2, geometry->stride));
    stack.emplace_back(std::vector<int64_t>(2, geometry->dilation));
    stack.emplace_back(geometry->groups);
    if (other == nullptr) {
      stack.emplace_back(std::string(attr));
      stack.emplace_back(scalars(attr_scalars, n_scalars));
      stack.emplace_back();  // algorithm
      unary.callBoxed(&stack);
    } else {
      stack.emplace_back(std::string("add"));
      stack.emplace_back(at::Scalar(1.0));                         // alpha
      stack.emplace_back();                                        // unary_attr
      stack.emplace_back(c10::List<std::optional<at::Scalar>>());  // unary_scalars
      stack.emplace_back();                                        // unary_algorithm
      binary.callBoxed(&stack);
    }
    return new at::Tensor(stack.at(0).toTensor());
  })
  return nullptr;
}

// The ops with a scalar argument that torch.optim's updates use and tch 0.24 binds without it:
// op 0 `t.add_(a, alpha=s)`, 1 `t.add(a, alpha=s)`, 2 `t.addcmul_(a, b, value=s)`,
// 3 `t.addcmul(a, b, value=s)`, 4 `t.addcdiv_(a, b, value=s)`. Returns the result (for the
// in-place ops, a new handle to `t`).
at::Tensor* mn_scaled_op(int op, const at::Tensor* t, const at::Tensor* a, const at::Tensor* b,
                         double s, char** err) {
  MN_PROTECT({
    at::Scalar scalar(s);
    switch (op) {
      case 0:
        return new at::Tensor(t->add_(*a, scalar));
      case 1:
        return new at::Tensor(t->add(*a, scalar));
      case 2:
        return new at::Tensor(t->addcmul_(*a, *b, scalar));
      case 3:
        return new at::Tensor(t->addcmul(*a, *b, scalar));
      case 4:
        return new at::Tensor(t->addcdiv_(*a, *b, scalar));
      default:
        throw std::invalid_argument("mn_scaled_op: unknown op");
    }
  })
  return nullptr;
}

// `F.hardtanh(t, lo, hi, inplace)` (nn.ReLU6 is hardtanh(0, 6)): tch binds hardtanh without its
// bounds. Its gradient is zero at the bounds themselves, unlike clamp's.
at::Tensor* mn_hardtanh(const at::Tensor* t, double lo, double hi, bool inplace, char** err) {
  MN_PROTECT({
    if (inplace) {
      return new at::Tensor(at::hardtanh_(*const_cast<at::Tensor*>(t), lo, hi));
    }
    return new at::Tensor(at::hardtanh(*t, lo, hi));
  })
  return nullptr;
}

// `torch.autocast(device, dtype)`'s `__enter__` (cuda: device 1, else the CPU; dtype 1 float16,
// else bfloat16): enables autocast for the device in this thread with the weight-cast cache on.
void mn_autocast_enter(int device, int dtype) {
  at::DeviceType d = device == 1 ? at::kCUDA : at::kCPU;
  at::autocast::set_autocast_enabled(d, true);
  at::autocast::set_autocast_dtype(d, dtype == 1 ? at::kHalf : at::kBFloat16);
  at::autocast::increment_nesting();
  at::autocast::set_autocast_cache_enabled(true);
}

// `__exit__`: clears the cast cache when the outermost region ends, and disables autocast.
void mn_autocast_exit(int device) {
  at::DeviceType d = device == 1 ? at::kCUDA : at::kCPU;
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(d, false);
}

// `p.grad = None`: drops a parameter's gradient, as torch.optim's `zero_grad(set_to_none=True)`
// does (tch 0.24's `zero_grad` fills it with zeros instead).
void mn_clear_grad(const at::Tensor* t) { t->mutable_grad().reset(); }

// One intra-op thread for the calling thread only, as `torch.set_num_threads(1)` in each
// DataLoader worker: ATen's `parallel_for` then runs inline there instead of starting an OpenMP
// team per worker, whose threads would compete with the model's for the cores (and, with more
// OpenMP threads than cores, make libgomp sleep on a futex between parallel regions). ATen's
// per-thread initialization runs first (it would otherwise reset the count later); OpenMP's
// `nthreads-var` is per thread, so the model's threads keep theirs. Returns the count now seen
// by this thread.
int mn_serial_thread() {
  (void)at::get_num_threads();
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))) {
    set(1);
  }
  return at::get_num_threads();
}

}  // extern "C"
