// A folded model's forward as a list of oneDNN primitives, called directly (no TorchScript, no
// ATen between layers): every convolution with its activation and residual add as post-ops,
// squeeze-excitation as pooling, two 1x1 convolutions and a broadcast multiply, then global
// pooling and the classifier as 1x1 convolutions (in fp32 our own kernel, Dense), in fp32 or
// bf16. Activations keep one layout from the first layer to the last (8-channel blocks on AVX2,
// 16-channel blocks in fp32 on AVX-512, NHWC in bf16; see Engine::maps_layout); buffers are
// reused as soon as a value is dead. The primitives, reordered weights and buffers of each input
// shape are built on its first forward and kept (a few shapes at most). A batch runs its layers up to the global
// pooling one or two images at a time per thread ("lanes", Engine::run) and the classifier
// once for the batch.
//
// It links the oneDNN that `make setup` installs into .venv (PyPI `onednn-cpu-gomp`), not
// libtorch's. build.rs compiles it on its own, without libtorch's headers (which ship another
// oneDNN's), into a shared library that src/ffi/engine.rs loads with dlopen(RTLD_LOCAL |
// RTLD_DEEPBIND): the two oneDNNs export some of the same C++ symbols (the vtables of their
// primitive caches' results, with different layouts), and each must bind to its own. It shares
// libtorch's OpenMP runtime (the same libgomp.so.1). Only plain C types cross the boundary.
// Errors come back as in shim.cpp (protect.h): a malloc'd message in `*err`, freed by
// `mn_engine_free_error`.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "mn_ffi.h"
#include "protect.h"

#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define MN_DENSE_AVX2 1
#endif

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// Activations as src/nn/activation.rs numbers them (Activation::engine_code).
enum Act : int32_t { kIdentity = 0, kRelu = 1, kRelu6 = 2, kHardswish = 3, kHardsigmoid = 4 };

void append_act(dnnl::post_ops& po, int32_t act) {
  switch (act) {
    case kIdentity:
      break;
    case kRelu:
      po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      break;
    case kRelu6:
      po.append_eltwise(dnnl::algorithm::eltwise_clip, 0.f, 6.f);
      break;
    case kHardswish:
      po.append_eltwise(dnnl::algorithm::eltwise_hardswish, 1.f / 6.f, 0.5f);
      break;
    case kHardsigmoid:
      po.append_eltwise(dnnl::algorithm::eltwise_hardsigmoid, 1.f / 6.f, 0.5f);
      break;
    default:
      throw std::invalid_argument("unknown activation code " + std::to_string(act));
  }
}

void check_act(int32_t act) {
  if (act < kIdentity || act > kHardsigmoid) {
    throw std::invalid_argument("unknown activation code " + std::to_string(act));
  }
}

// One recorded operation of the program, with its own copy of the weights (PyTorch's layouts).
struct Op {
  enum Kind { kConv, kResidualStart, kResidualEnd, kSqueezeExcite, kPool } kind;
  explicit Op(Kind k) : kind(k) {}
  // Conv (also the squeeze-excitation's first conv): weight [oc, ic/groups, k, k], bias [oc].
  std::vector<float> w, b;
  int64_t oc = 0, icg = 0, k = 1, stride = 1, padding = 0, dilation = 1, groups = 1;
  int32_t act = kIdentity;
  // Squeeze-excitation's second conv: [channels, squeeze] and [channels].
  std::vector<float> w2, b2;
};

// A buffer of `bytes`, reused once the value in it is dead.
struct Buffer {
  std::unique_ptr<char, decltype(&std::free)> data{nullptr, &std::free};
  size_t bytes = 0;
  int refs = 0;
};

struct Step {
  Step(dnnl::primitive prim, std::unordered_map<int, memory> a)
      : p(std::move(prim)), args(std::move(a)) {}
  explicit Step(std::function<void()> f) : own(std::move(f)) {}
  dnnl::primitive p;
  std::unordered_map<int, memory> args;
  std::function<void()> own;  // instead of `p`: one of our kernels (Dense)
};

// The classifier's layers (the 1x1 convolutions after the global pooling), `y[i] = act(W x[i] +
// b)` on pooled features: for a batch of 1 a matrix-vector product that streams W (5 MB for a
// 1280 -> 1000 classifier) for two flops per weight. oneDNN 3.2 runs them as its GEMM
// (`x64:gemm:jit`). Here rows of W are taken 8 at a time and each is read once for every image
// of the batch (AVX2: 8 rows of one image, or 4 rows of two images, per pass over the inputs),
// the rows split across threads. scripts/dense_compare.sh times both in one process: 2026-12-01
// on the 2-vCPU Zen 3 (3 runs), V2's 1280 -> 1000 with W out of cache, 1 image 0.45-0.53 ms
// against 0.62-0.68 on one thread and 0.28-0.36 against 0.40-0.47 on two; 16 images 0.93-1.05
// against 1.81-2.06 ms on two threads.
//
// Each output is summed the same way whatever the batch and the threads: eight partial sums
// over the inputs in order (input j into sum j mod 8), added pairwise ((0+4)+(2+6))+((1+5)+
// (3+7)), then the bias, then the activation. So an image's logits do not depend on its batch
// (tests/it/optimizations.rs), and the AVX2 kernel and the portable one give the same bits (the
// unit test in src/ffi/engine.rs).
struct Dense {
  std::vector<float> w;  // [out][in], PyTorch's layout
  std::vector<float> b;  // [out]
  int64_t in = 0, out = 0;
  int32_t act = kIdentity;

  static constexpr int64_t kRows = 8;

  // `portable`: the portable code even where AVX2 is (to test that both give the same bits).
  void run(const float* x, float* y, int64_t n, bool portable = false) const {
    const int64_t blocks = (out + kRows - 1) / kRows;
    const bool wide = !portable && has_avx2() && in % 8 == 0;
    // All threads for a large product, one for a small one.
    const bool parallel = 2 * n * in * out >= (int64_t{1} << 20) && !omp_in_parallel();
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t o = blk * kRows, rows = std::min(kRows, out - o);
      for (int64_t i = 0; i < n; i += 2) {
        const int64_t imgs = std::min<int64_t>(2, n - i);
        float sums[2][kRows];
#ifdef MN_DENSE_AVX2
        if (wide && rows == kRows && imgs == 1) {
          block_avx2<1, 8>(x + i * in, o, sums, 0);
        } else if (wide && rows == kRows) {
          block_avx2<2, 4>(x + i * in, o, sums, 0);
          block_avx2<2, 4>(x + i * in, o + 4, sums, 4);
        } else {
          block_portable(x + i * in, imgs, o, rows, sums);
        }
#else
        (void)wide;
        block_portable(x + i * in, imgs, o, rows, sums);
#endif
        for (int64_t m = 0; m < imgs; ++m) {
          for (int64_t r = 0; r < rows; ++r) {
            y[(i + m) * out + o + r] = activate(sums[m][r] + b[o + r]);
          }
        }
      }
    }
  }

 private:
  static bool has_avx2() {
#ifdef MN_DENSE_AVX2
    static const bool yes = [] {
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }();
    return yes;
#else
    return false;
#endif
  }

  float activate(float v) const {
    switch (act) {
      case kRelu:  // NaN stays NaN, as in ATen (std::max returns its first argument then)
        return std::max(v, 0.f);
      case kRelu6:
        return std::min(std::max(v, 0.f), 6.f);
      case kHardswish:  // ATen's: x * min(max(x + 3, 0), 6) / 6
        return v * std::min(std::max(v + 3.f, 0.f), 6.f) / 6.f;
      case kHardsigmoid:  // ATen's: min(max(x + 3, 0), 6) / 6
        return std::min(std::max(v + 3.f, 0.f), 6.f) / 6.f;
      default:
        return v;
    }
  }

  // The eight partial sums added in the fixed order above.
  static float reduce8(const float* l) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
  }

  void block_portable(const float* x, int64_t imgs, int64_t o, int64_t rows,
                      float (&sums)[2][kRows]) const {
    for (int64_t m = 0; m < imgs; ++m) {
      for (int64_t r = 0; r < rows; ++r) {
        const float* wr = w.data() + (o + r) * in;
        const float* xm = x + m * in;
        float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = 0; j < in; ++j) l[j % 8] = std::fma(wr[j], xm[j], l[j % 8]);
        sums[m][r] = reduce8(l);
      }
    }
  }

#ifdef MN_DENSE_AVX2
  // Rows o..o+Rows of Imgs images into sums[m][at + r].
  template <int Imgs, int Rows>
  __attribute__((target("avx2,fma"))) void block_avx2(const float* x, int64_t o,
                                                      float (&sums)[2][kRows], int at) const {
    __m256 acc[Imgs][Rows];
    for (int m = 0; m < Imgs; ++m) {
      for (int r = 0; r < Rows; ++r) acc[m][r] = _mm256_setzero_ps();
    }
    const float* w0 = w.data() + o * in;
    for (int64_t j = 0; j < in; j += 8) {
      __m256 xv[Imgs];
      for (int m = 0; m < Imgs; ++m) xv[m] = _mm256_loadu_ps(x + m * in + j);
      for (int r = 0; r < Rows; ++r) {
        const __m256 wv = _mm256_loadu_ps(w0 + r * in + j);
        for (int m = 0; m < Imgs; ++m) acc[m][r] = _mm256_fmadd_ps(wv, xv[m], acc[m][r]);
      }
    }
    alignas(32) float l[8];
    for (int m = 0; m < Imgs; ++m) {
      for (int r = 0; r < Rows; ++r) {
        _mm256_store_ps(l, acc[m][r]);
        sums[m][at + r] = reduce8(l);
      }
    }
  }
#endif
};

// Everything one input shape needs.
struct Plan {
  explicit Plan(const dnnl::engine& eng) : stream(eng) {}
  std::vector<Step> steps;
  std::vector<std::unique_ptr<Buffer>> buffers;
  std::vector<memory> weights;  // reordered once
  memory input, output;         // the caller's pointers, set on every run
  dnnl::stream stream;          // its own, so that lanes run concurrently
  uint64_t used = 0;            // when it last ran, for eviction
  int64_t channels = 0;         // per image out: a trunk's pooled features, a head's classes
};

// A plan per lane: k images at a time on one thread each (see Engine::run).
struct Lanes {
  std::vector<std::unique_ptr<Plan>> plans;
  uint64_t used = 0;
};

class Engine {
 public:
  // `act`: the type of the activations and weights, f32 or bf16 (bias, input and output stay
  // f32; a bf16 program rounds every layer's output to bf16, as PyTorch's bf16 model does).
  explicit Engine(dt act) : act_(act), maps_(maps_layout(act)) {}

  std::vector<Op> ops;

  // The program runs in two parts: the trunk, every layer up to the global pooling, and the
  // head, the classifier after it, with the pooled features in between ([n, C], `pooled_`).
  //
  // A batch of two or more images on T > 1 threads runs its trunk as T lanes: each thread takes
  // whole images, k at a time (images_per_lane: 1, or 2 with squeeze-excitation), through a
  // trunk built for k images on one thread. That keeps an image's activations in its core's
  // cache, where a batched trunk streams the whole batch through memory at every layer and
  // splits small layers across threads. The images left over (n mod kT) go through a one-image
  // trunk on all threads. The head then runs once for the batch on all threads, so that its
  // weights (the largest of the model) are read once per batch rather than once per image.
  //
  // Every convolution computes each output from the same sums in the same order whatever the
  // thread count and the batch (threads split outputs, never a reduction), so an image's logits
  // do not depend on the batch it came in (tests/it/optimizations.rs checks it bit for bit).
  //
  // `out` holds `width` values per image, which must be what the program gives.
  void run(const float* x, int64_t n, int64_t h, int64_t w, float* out, int64_t width) {
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    const int64_t image = 3 * h * w;
    if (n < 2 || threads < 2) {
      Plan& trunk = trunk_for(n, h, w);
      Plan& head = checked_head(n, trunk.channels, width);
      pooled_.resize(n * trunk.channels);
      execute(trunk, x, pooled_.data());
      execute(head, pooled_.data(), out);
      return;
    }
    const int64_t k = images_per_lane(n, threads);
    Lanes& lanes = lanes_for(h, w, threads, k);
    const int64_t c = lanes.plans[0]->channels;
    Plan& head = checked_head(n, c, width);
    pooled_.resize(n * c);
    float* pooled = pooled_.data();
    const int64_t whole = n / (threads * k) * (threads * k);
    std::string error;
    // Each lane takes the next k images when it is free: a lane whose core is taken by another
    // process or thread (classify's decoders, a busy host) does fewer, and the others do not
    // wait for it. The lanes' plans are alike, so which one runs an image changes no bit.
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
    {
      // The team may be smaller than asked for; its threads still cover every image.
      Plan& p = *lanes.plans[omp_get_thread_num()];
      try {
        for (int64_t i = next.fetch_add(k); i < whole; i = next.fetch_add(k)) {
          execute(p, x + i * image, pooled + i * c);
        }
      } catch (const std::exception& e) {
#pragma omp critical(mn_engine_error)
        error = e.what();
      } catch (...) {  // nothing may leave an OpenMP region
#pragma omp critical(mn_engine_error)
        error = "unknown error in an engine lane";
      }
    }
    if (!error.empty()) throw std::runtime_error(error);
    if (whole < n) {
      Plan& one = trunk_for(1, h, w);
      for (int64_t i = whole; i < n; ++i) execute(one, x + i * image, pooled + i * c);
    }
    execute(head, pooled, out);
  }

  // `count` one-image trunks for `h` x `w` images, each built for one thread, for the caller's
  // own threads (classify's lanes, each of which also decodes its images): plan i runs on one
  // thread at a time (run_lane). They hold their own reordered weights and buffers, outside
  // the plan caches, so that nothing here evicts them.
  std::unique_ptr<Lanes> own_lanes(int count, int64_t h, int64_t w) {
    if (count < 1) throw std::invalid_argument("lanes: count must be at least 1");
    auto lanes = std::make_unique<Lanes>();
    ThreadsFor one(1);
    for (int i = 0; i < count; ++i) {
      lanes->plans.push_back(planned([&] { return build_trunk(1, h, w); }));
    }
    return lanes;
  }

  // One image `x` ([3, h, w]) through `p` on the calling thread alone: its pooled features.
  static void run_lane(Plan& p, const float* x, float* pooled) {
    ThreadsFor one(1);
    execute(p, x, pooled);
  }

  // The head for `n` images of `c` pooled features on the calling thread's OpenMP threads.
  void run_head(const float* pooled, int64_t n, int64_t c, float* out, int64_t width) {
    execute(checked_head(n, c, width), pooled, out);
  }

 private:
  static constexpr size_t kMaxPlans = 4;
  dt act_;
  tag maps_;  // what a conv writes when nothing asks otherwise (the layout hints below)

  // fp32 on AVX-512: 16-channel blocks. Left to oneDNN (`any`) it picks NHWC for its brgemm
  // kernels there, and the blocked jit kernels are faster: 2026-12-01 on an Intel Xeon with
  // AMX (2 threads, 3 interleaved runs), V2 batch 1 / 16 4.7-5.9 / 66-80 ms against 6.2-7.1 /
  // 86-93, V3 Large 4.4-5.6 / 56-68 against 5.7-6.1 / 71-74, V1 6.5-8.5 / 105-124 against
  // 8.5-8.9 / 116-131, V3 Small even. Not in bf16, where the blocks lose AMX (V2 twice as
  // slow), nor on AVX2, where oneDNN picks 8-channel blocks itself.
  static tag maps_layout(dt act) {
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto avx512 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core);
    return act == dt::f32 && (isa & avx512) == avx512 ? tag::nChw16c : tag::any;
  }

  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream_{eng_};
  std::map<std::tuple<int64_t, int64_t, int64_t>, std::unique_ptr<Plan>> trunks_;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Plan>> heads_;  // by (n, channels)
  std::map<std::tuple<int64_t, int64_t, int64_t>, Lanes> lanes_;  // by (h, w, images per lane)
  std::vector<float> pooled_;
  uint64_t clock_ = 0;

  // The images a lane takes at a time, for `n` images on `threads` threads: two for a program
  // with squeeze-excitation when every lane gets at least two, else one. The excitation's two
  // 1x1 convolutions on pooled features are matrix-vector products that stream their weights
  // (7.4 MB in V3 Large) once per step, so two images halve that traffic. 2026-12-01 on the
  // 2-vCPU Zen 3 (AVX2), batch 16 on 2 threads, minimum of 30 iterations, 3 interleaved runs
  // of one image against two per step: V3 Large 56.3 / 55.5 / 66.8 ms against 53.8 / 54.1 /
  // 52.1, V3 Small 20.4 / 16.4 / 16.9 against 19.1 / 16.1 / 16.2; V2 and V1, which have no
  // excitation, even (67.1-81.4 against 67.1-67.7, 109.3-110.9 against 108.3-112.6); four
  // images per step no better than two. The two-image kernels sum in the same order as the
  // one-image ones, so the logits stay bit for bit: checked by hand on AVX2 (V2, V3 Large and
  // V3 Small at 2 and 4 images on one thread), and by tests/it/optimizations.rs on the machine
  // that runs it; not yet measured for speed on AVX-512 or in bf16.
  int64_t images_per_lane(int64_t n, int threads) const {
    const bool excites = std::any_of(ops.begin(), ops.end(), [](const Op& op) {
      return op.kind == Op::kSqueezeExcite;
    });
    const int64_t per = excites ? 2 : 1;
    return n >= threads * per ? per : 1;
  }

  static void execute(Plan& p, const float* x, float* out) {
    p.input.set_data_handle(const_cast<float*>(x));
    p.output.set_data_handle(out);
    for (auto& s : p.steps) {
      if (s.own) {
        p.stream.wait();
        s.own();
      } else {
        s.p.execute(p.stream, s.args);
      }
    }
    p.stream.wait();
  }

  // The plan under `key` in `cache`, built by `make` on first use; the least recently used of
  // kMaxPlans goes.
  template <typename Key, typename Make>
  Plan& cached(std::map<Key, std::unique_ptr<Plan>>& cache, const Key& key, Make make) {
    auto it = cache.find(key);
    if (it == cache.end()) {
      auto built = make();
      evict(cache);
      it = cache.emplace(key, std::move(built)).first;
    }
    it->second->used = ++clock_;
    return *it->second;
  }

  Plan& trunk_for(int64_t n, int64_t h, int64_t w) {
    return cached(trunks_, std::make_tuple(n, h, w),
                  [&] { return planned([&] { return build_trunk(n, h, w); }); });
  }

  // The head for `n` images of `c` features, which must give `width` values per image.
  Plan& checked_head(int64_t n, int64_t c, int64_t width) {
    Plan& head = cached(heads_, std::make_pair(n, c),
                        [&] { return planned([&] { return build_head(n, c); }); });
    if (head.channels != width) {
      throw std::invalid_argument("the output holds " + std::to_string(width) +
                                  " values per image; the program gives " +
                                  std::to_string(head.channels));
    }
    return head;
  }

  // Sets this thread's OpenMP threads (oneDNN's count for the primitives created meanwhile) and
  // restores them on leaving the scope.
  class ThreadsFor {
   public:
    explicit ThreadsFor(int n) : before_(omp_get_max_threads()) { omp_set_num_threads(n); }
    ~ThreadsFor() { omp_set_num_threads(before_); }
    ThreadsFor(const ThreadsFor&) = delete;
    ThreadsFor& operator=(const ThreadsFor&) = delete;

   private:
    int before_;
  };

  // `threads` trunks of `k` images of this size, each built for one thread (oneDNN sizes its
  // kernels' blocking by the threads it sees when a primitive is created).
  Lanes& lanes_for(int64_t h, int64_t w, int threads, int64_t k) {
    auto key = std::make_tuple(h, w, k);
    auto it = lanes_.find(key);
    if (it == lanes_.end() || it->second.plans.size() < static_cast<size_t>(threads)) {
      Lanes lanes;
      if (it != lanes_.end()) lanes = std::move(it->second);
      {
        ThreadsFor one(1);
        while (lanes.plans.size() < static_cast<size_t>(threads)) {
          lanes.plans.push_back(planned([&] { return build_trunk(k, h, w); }));
        }
      }
      if (it == lanes_.end()) evict(lanes_);
      it = lanes_.insert_or_assign(key, std::move(lanes)).first;
    }
    it->second.used = ++clock_;
    return it->second;
  }

  // Makes room for one more entry in `cache`: drops the least recently used at kMaxPlans.
  template <typename Map>
  static void evict(Map& cache) {
    if (cache.size() < kMaxPlans) return;
    auto oldest = cache.begin();
    for (auto i = cache.begin(); i != cache.end(); ++i) {
      if (used_of(i->second) < used_of(oldest->second)) oldest = i;
    }
    cache.erase(oldest);
  }
  static uint64_t used_of(const std::unique_ptr<Plan>& p) { return p->used; }
  static uint64_t used_of(const Lanes& l) { return l.used; }

  // A value during planning: its memory and the buffer that holds it.
  struct Value {
    memory mem;
    Buffer* buf;
    int producer = -1;  // the op whose conv chose this layout freely, if any
  };

  // Planning a program twice: where a conv had to reorder its input, the first pass records
  // the layout it wanted as a hint for the conv that wrote that input, and the second pass has
  // that conv write it directly (on AVX-512 the first conv picks 16-channel blocks, which the
  // depthwise conv after it only takes with the reference kernel: a reorder of 1.6 MB).
  std::map<int, memory::desc> dst_hints_;
  bool new_hint_ = false;

  template <typename Build>
  std::unique_ptr<Plan> planned(Build build) {
    dst_hints_.clear();
    new_hint_ = false;
    auto plan = build();
    if (new_hint_) plan = build();
    dst_hints_.clear();
    return plan;
  }

  Value alloc(Plan& plan, const memory::desc& d) {
    size_t bytes = d.get_size();
    Buffer* best = nullptr;
    for (auto& b : plan.buffers) {
      if (b->refs == 0 && b->bytes >= bytes && (best == nullptr || b->bytes < best->bytes)) {
        best = b.get();
      }
    }
    if (best == nullptr) {
      plan.buffers.push_back(std::make_unique<Buffer>());
      best = plan.buffers.back().get();
      best->bytes = bytes;
      // 64-byte aligned, as oneDNN allocates its own.
      best->data.reset(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      if (!best->data) throw std::bad_alloc();
    }
    best->refs = 1;
    return {memory(d, eng_, best->data.get()), best};
  }

  static void release(Value& v) {
    if (v.buf != nullptr) --v.buf->refs;
  }

  memory weights(Plan& plan, const std::vector<float>& data, const memory::dims& dims, tag t,
                 const memory::desc& want) {
    memory src(memory::desc(dims, dt::f32, t), eng_, const_cast<float*>(data.data()));
    memory dst(want, eng_);
    dnnl::reorder(src, dst).execute(stream_, src, dst);
    stream_.wait();
    plan.weights.push_back(dst);
    return dst;
  }

  // `src` in the layout `want`, reordering into a fresh buffer when it differs.
  Value as_layout(Plan& plan, Value src, const memory::desc& want) {
    if (src.mem.get_desc() == want) return src;
    Value r = alloc(plan, want);
    plan.steps.push_back({dnnl::reorder(src.mem, r.mem),
                          {{DNNL_ARG_FROM, src.mem}, {DNNL_ARG_TO, r.mem}}});
    release(src);
    return r;
  }

  // A convolution of `src` ([n, c, h, w]); with `residual`, `dst = act(conv(src) + residual)`
  // computed in the residual's buffer.
  // `index`: the op's place in the program, for the layout hints and for telling the head's
  // convolutions (after the global pooling, Dense in fp32) from the trunk's (-1: neither).
  Value conv(Plan& plan, Value src, const std::vector<float>& wdata, const std::vector<float>& bdata,
             int64_t oc, int64_t k, int64_t stride, int64_t pad, int64_t dil, int64_t groups,
             int32_t act, Value* residual, int index) {
    auto dims = src.mem.get_desc().get_dims();
    int64_t n = dims[0], c = dims[1], h = dims[2], w = dims[3];
    int64_t ek = dil * (k - 1) + 1;
    int64_t oh = (h + 2 * pad - ek) / stride + 1, ow = (w + 2 * pad - ek) / stride + 1;
    if (oh < 1 || ow < 1) throw std::invalid_argument("input too small for a convolution");
    // The weights were copied with the recorded shape; a differing input would read past them.
    if (groups < 1 || c % groups != 0 || oc % groups != 0 ||
        static_cast<size_t>(oc * (c / groups) * k * k) != wdata.size() ||
        static_cast<size_t>(oc) != bdata.size()) {
      throw std::invalid_argument("a convolution's weights do not fit its " + std::to_string(c) +
                                  "-channel input");
    }
    // The head's (ops after the global pooling) 1x1 convolutions of pooled features.
    if (act_ == dt::f32 && h == 1 && w == 1 && k == 1 && groups == 1 && stride == 1 &&
        pad == 0 && residual == nullptr && index > static_cast<int>(pool_index())) {
      return dense(plan, src, wdata, bdata, oc, act);
    }
    memory::dims wd = groups == 1 ? memory::dims{oc, c, k, k}
                                  : memory::dims{groups, oc / groups, c / groups, k, k};
    tag wt = groups == 1 ? tag::oihw : tag::goihw;
    memory::desc bdesc({oc}, dt::f32, tag::x);
    dnnl::post_ops po;
    if (residual != nullptr) po.append_sum(1.f);
    append_act(po, act);
    dnnl::primitive_attr attr;
    attr.set_post_ops(po);
    auto make = [&](const memory::desc& s, const memory::desc& d) {
      return dnnl::convolution_forward::primitive_desc(
          eng_, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, s,
          memory::desc(wd, act_, tag::any), bdesc, d, {stride, stride}, {dil - 1, dil - 1},
          {pad, pad}, {pad, pad}, attr);
    };
    // The output's layout: the shortcut's for a residual add (required), else a hint from a
    // later conv, else `maps_` (both only preferred: dropped when oneDNN offers no jit kernel).
    auto hint = residual == nullptr ? dst_hints_.find(index) : dst_hints_.end();
    const bool free_dst = residual == nullptr && hint == dst_hints_.end();
    const memory::desc any_dst({n, oc, oh, ow}, act_, tag::any);
    memory::desc dst_d = residual != nullptr ? residual->mem.get_desc()
                         : !free_dst         ? hint->second
                         : oh > 1            ? memory::desc({n, oc, oh, ow}, act_, maps_)
                                             : any_dst;
    // The layout the previous layer wrote, else whatever oneDNN prefers (and a reorder). oneDNN
    // accepts most layouts with its reference kernel, hundreds of times slower than a jit one
    // (on AVX-512, a depthwise conv on 16-channel blocks: 230 ms against 0.2), so that counts
    // as not accepted; only as the last resort is it taken.
    const memory::desc any_src(dims, act_, tag::any);
    std::vector<std::pair<memory::desc, memory::desc>> tries = {{src.mem.get_desc(), dst_d},
                                                                {any_src, dst_d}};
    if (residual == nullptr) tries.push_back({any_src, any_dst});
    dnnl::convolution_forward::primitive_desc pd;
    for (const auto& [s, d] : tries) {
      try {
        pd = make(s, d);
        if (!is_reference(pd)) break;
      } catch (const dnnl::error&) {
      }
    }
    if (!pd) pd = make(tries.back().first, tries.back().second);
    if (src.producer >= 0 && src.mem.get_desc() != pd.src_desc() &&
        dst_hints_.count(src.producer) == 0) {
      dst_hints_.emplace(src.producer, pd.src_desc());
      new_hint_ = true;
    }
    src = as_layout(plan, src, pd.src_desc());
    memory wm = weights(plan, wdata, wd, wt, pd.weights_desc());
    memory bm = weights(plan, bdata, {oc}, tag::x, bdesc);
    Value dst;
    if (residual != nullptr) {
      dst = *residual;  // takes over the shortcut's reference
    } else {
      dst = alloc(plan, pd.dst_desc());
      if (free_dst) dst.producer = index;
    }
    plan.steps.push_back({dnnl::convolution_forward(pd),
                          {{DNNL_ARG_SRC, src.mem},
                           {DNNL_ARG_WEIGHTS, wm},
                           {DNNL_ARG_BIAS, bm},
                           {DNNL_ARG_DST, dst.mem}}});
    release(src);
    return dst;
  }

  // A 1x1 convolution of [n, c, 1, 1] in fp32 as our Dense kernel (plain layouts in and out).
  Value dense(Plan& plan, Value src, const std::vector<float>& wdata,
              const std::vector<float>& bdata, int64_t oc, int32_t act) {
    const auto dims = src.mem.get_desc().get_dims();
    const int64_t n = dims[0], c = dims[1];
    auto d = std::make_shared<Dense>();
    d->w = wdata, d->b = bdata, d->in = c, d->out = oc, d->act = act;
    src = as_layout(plan, src, memory::desc({n, c, 1, 1}, dt::f32, tag::nchw));
    Value dst = alloc(plan, memory::desc({n, oc, 1, 1}, dt::f32, tag::nchw));
    memory in = src.mem, out = dst.mem;
    plan.steps.emplace_back([d, in, out, n] {
      d->run(static_cast<const float*>(in.get_data_handle()),
             static_cast<float*>(out.get_data_handle()), n);
    });
    release(src);
    return dst;
  }

  // Whether oneDNN chose its reference (not jit-compiled) implementation.
  static bool is_reference(const dnnl::primitive_desc_base& pd) {
    return std::strncmp(pd.impl_info_str(), "ref", 3) == 0;
  }

  Value global_pool(Plan& plan, Value src) {
    auto dims = src.mem.get_desc().get_dims();
    memory::desc d({dims[0], dims[1], 1, 1}, act_, tag::any);
    auto pd = dnnl::pooling_forward::primitive_desc(
        eng_, dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_avg_exclude_padding,
        src.mem.get_desc(), d, {dims[2], dims[3]}, {dims[2], dims[3]}, {0, 0}, {0, 0}, {0, 0});
    Value dst = alloc(plan, pd.dst_desc());
    plan.steps.push_back(
        {dnnl::pooling_forward(pd), {{DNNL_ARG_SRC, src.mem}, {DNNL_ARG_DST, dst.mem}}});
    return dst;
  }

  // Ops [begin, end) of the program on `cur`; a shortcut must end where it starts.
  Value walk(Plan& plan, Value cur, size_t begin, size_t end) {
    std::vector<Value> shortcuts;
    for (size_t i = begin; i < end; ++i) {
      const Op& op = ops[i];
      switch (op.kind) {
        case Op::kConv: {
          // A shortcut that ends right after this conv becomes its sum post-op when the conv
          // has no activation (torchvision's blocks: `x + project(...)`).
          bool fuse_sum = i + 1 < end && ops[i + 1].kind == Op::kResidualEnd &&
                          op.act == kIdentity && !shortcuts.empty();
          Value* res = nullptr;
          if (fuse_sum) {
            // The shortcut must be in the layout the conv writes; make it so.
            auto dims = cur.mem.get_desc().get_dims();
            int64_t ek = op.dilation * (op.k - 1) + 1;
            int64_t oh = (dims[2] + 2 * op.padding - ek) / op.stride + 1;
            int64_t ow = (dims[3] + 2 * op.padding - ek) / op.stride + 1;
            auto sd = shortcuts.back().mem.get_desc().get_dims();
            if (sd != memory::dims{dims[0], op.oc, oh, ow}) {
              throw std::invalid_argument("residual shapes differ");
            }
            res = &shortcuts.back();
          }
          cur = conv(plan, cur, op.w, op.b, op.oc, op.k, op.stride, op.padding, op.dilation,
                     op.groups, op.act, res, static_cast<int>(i));
          if (fuse_sum) {
            shortcuts.pop_back();
            ++i;  // the ResidualEnd is done
          }
          break;
        }
        case Op::kResidualStart:
          if (cur.buf == nullptr) throw std::invalid_argument("a shortcut from the input");
          ++cur.buf->refs;
          shortcuts.push_back(cur);
          break;
        case Op::kResidualEnd: {
          if (shortcuts.empty()) throw std::invalid_argument("a shortcut end without a start");
          Value s = shortcuts.back();
          shortcuts.pop_back();
          s = as_layout(plan, s, cur.mem.get_desc());
          auto pd = dnnl::binary::primitive_desc(eng_, dnnl::algorithm::binary_add,
                                                 cur.mem.get_desc(), s.mem.get_desc(),
                                                 cur.mem.get_desc());
          plan.steps.push_back(
              {dnnl::binary(pd),
               {{DNNL_ARG_SRC_0, cur.mem}, {DNNL_ARG_SRC_1, s.mem}, {DNNL_ARG_DST, cur.mem}}});
          release(s);
          break;
        }
        case Op::kSqueezeExcite: {
          Value p = global_pool(plan, cur);
          int64_t sq = op.oc;
          int64_t c = cur.mem.get_desc().get_dims()[1];
          Value a = conv(plan, p, op.w, op.b, sq, 1, 1, 0, 1, 1, kRelu, nullptr, -1);
          Value g = conv(plan, a, op.w2, op.b2, c, 1, 1, 0, 1, 1, kHardsigmoid, nullptr, -1);
          auto d = cur.mem.get_desc();
          auto pd = dnnl::binary::primitive_desc(eng_, dnnl::algorithm::binary_mul, d,
                                                 g.mem.get_desc(), d);
          plan.steps.push_back(
              {dnnl::binary(pd),
               {{DNNL_ARG_SRC_0, cur.mem}, {DNNL_ARG_SRC_1, g.mem}, {DNNL_ARG_DST, cur.mem}}});
          release(g);
          break;
        }
        case Op::kPool:
          throw std::invalid_argument("a second global pooling");
      }
    }
    if (!shortcuts.empty()) throw std::invalid_argument("a shortcut without an end");
    return cur;
  }

  // Where the trunk ends: the program's one global pooling.
  size_t pool_index() const {
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].kind == Op::kPool) return i;
    }
    throw std::invalid_argument("incomplete program: no global pooling");
  }

  // Every layer up to the global pooling, for [n, 3, h, w] into [n, C] (plain layout).
  std::unique_ptr<Plan> build_trunk(int64_t n, int64_t h, int64_t w) {
    auto plan = std::make_unique<Plan>(eng_);
    plan->input = memory(memory::desc({n, 3, h, w}, dt::f32, tag::nchw), eng_, nullptr);
    Value cur = walk(*plan, Value{plan->input, nullptr}, 0, pool_index());
    Value p = global_pool(*plan, cur);
    release(cur);
    plan->channels = p.mem.get_desc().get_dims()[1];
    plan->output =
        memory(memory::desc({n, plan->channels, 1, 1}, dt::f32, tag::nchw), eng_, nullptr);
    plan->steps.push_back(
        {dnnl::reorder(p.mem, plan->output), {{DNNL_ARG_FROM, p.mem}, {DNNL_ARG_TO, plan->output}}});
    return plan;
  }

  // The layers after the global pooling, for [n, c] into [n, classes] (`channels`: the
  // classes).
  std::unique_ptr<Plan> build_head(int64_t n, int64_t c) {
    auto plan = std::make_unique<Plan>(eng_);
    plan->input = memory(memory::desc({n, c, 1, 1}, dt::f32, tag::nchw), eng_, nullptr);
    Value cur = walk(*plan, Value{plan->input, nullptr}, pool_index() + 1, ops.size());
    auto dims = cur.mem.get_desc().get_dims();
    if (dims[2] != 1 || dims[3] != 1) {
      throw std::invalid_argument("the program does not end in [N, classes]");
    }
    plan->channels = dims[1];
    plan->output =
        memory(memory::desc({n, plan->channels, 1, 1}, dt::f32, tag::nchw), eng_, nullptr);
    plan->steps.push_back({dnnl::reorder(cur.mem, plan->output),
                           {{DNNL_ARG_FROM, cur.mem}, {DNNL_ARG_TO, plan->output}}});
    return plan;
  }
};

Engine* as_engine(void* e) { return static_cast<Engine*>(e); }

std::vector<float> copy(const float* p, int64_t count) {
  if (count < 0) throw std::invalid_argument("negative size");
  return std::vector<float>(p, p + count);
}

}  // namespace

#define MN_EXPORT __attribute__((visibility("default")))

extern "C" {

MN_EXPORT void mn_engine_free_error(char* err) { std::free(err); }

MN_EXPORT const char* mn_engine_version() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    std::string runtime = ver->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
                          : ver->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                          : ver->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                                 : "other";
    return "oneDNN " + std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch) + " (" + runtime + ", " + ver->hash + ")";
  }();
  return v.c_str();
}

// An engine computing in fp32 (`bf16` false) or bf16.
MN_EXPORT void* mn_engine_new(bool bf16, char** err) {
  MN_PROTECT({ return static_cast<void*>(new Engine(bf16 ? dt::bf16 : dt::f32)); })
  return nullptr;
}

MN_EXPORT void mn_engine_free(void* e) { delete as_engine(e); }

// A convolution with weight [oc, in_channels / groups, k, k] and bias [oc], then `act`.
MN_EXPORT bool mn_engine_conv(void* e, const float* w, const float* b, int64_t oc, int64_t icg, int64_t k,
                    MnConvGeometry g, int32_t act, char** err) {
  MN_PROTECT({
    Op op(Op::kConv);
    op.w = copy(w, oc * icg * k * k);
    op.b = copy(b, oc);
    op.oc = oc, op.icg = icg, op.k = k, op.stride = g.stride, op.padding = g.padding;
    op.dilation = g.dilation, op.groups = g.groups, op.act = act;
    check_act(act);
    as_engine(e)->ops.push_back(std::move(op));
    return true;
  })
  return false;
}

MN_EXPORT void mn_engine_residual_start(void* e) { as_engine(e)->ops.push_back(Op(Op::kResidualStart)); }

MN_EXPORT void mn_engine_residual_end(void* e) { as_engine(e)->ops.push_back(Op(Op::kResidualEnd)); }

// torchvision's SqueezeExcitation over `channels`: pool, fc1 [squeeze, channels] + ReLU, fc2
// [channels, squeeze] + hardsigmoid, times the input.
MN_EXPORT bool mn_engine_squeeze_excite(void* e, const float* w1, const float* b1, const float* w2,
                              const float* b2, int64_t channels, int64_t squeeze, char** err) {
  MN_PROTECT({
    Op op(Op::kSqueezeExcite);
    op.w = copy(w1, squeeze * channels);
    op.b = copy(b1, squeeze);
    op.w2 = copy(w2, channels * squeeze);
    op.b2 = copy(b2, channels);
    op.oc = squeeze;
    as_engine(e)->ops.push_back(std::move(op));
    return true;
  })
  return false;
}

// Global average pooling to [N, C, 1, 1]; the classifier follows as 1x1 convolutions.
MN_EXPORT void mn_engine_pool(void* e) { as_engine(e)->ops.push_back(Op(Op::kPool)); }

// Our classifier kernel alone (Dense, fp32): `y` [n, out] = act(`x` [n, in] W^T + `b`) for `w`
// [out, in]; `portable` runs its portable code even where AVX2 is. For tests.
MN_EXPORT bool mn_engine_dense(const float* w, const float* b, int64_t in, int64_t out, int32_t act,
                               const float* x, int64_t n, float* y, bool portable, char** err) {
  MN_PROTECT({
    if (in < 1 || out < 1 || n < 0) throw std::invalid_argument("bad dense shape");
    check_act(act);
    Dense d;
    d.w = copy(w, in * out), d.b = copy(b, out), d.in = in, d.out = out, d.act = act;
    d.run(x, y, n, portable);
    return true;
  })
  return false;
}

// Runs the program on `x` ([n, 3, h, w], contiguous fp32) into `out` ([n, width]); an error
// when the program does not give `width` values per image.
MN_EXPORT bool mn_engine_run(void* e, const float* x, int64_t n, int64_t h, int64_t w, float* out,
                   int64_t width, char** err) {
  MN_PROTECT({
    as_engine(e)->run(x, n, h, w, out, width);
    return true;
  })
  return false;
}

// `count` one-image trunks for h x w images (Engine::own_lanes), with `channels` set to the
// pooled features each gives; freed by mn_engine_lanes_free.
MN_EXPORT void* mn_engine_lanes_new(void* e, int32_t count, int64_t h, int64_t w, int64_t* channels,
                                    char** err) {
  MN_PROTECT({
    auto lanes = as_engine(e)->own_lanes(count, h, w);
    *channels = lanes->plans[0]->channels;
    return static_cast<void*>(lanes.release());
  })
  return nullptr;
}

MN_EXPORT void mn_engine_lanes_free(void* l) { delete static_cast<Lanes*>(l); }

// Image `x` ([3, h, w] as the lanes were made for, contiguous fp32) through lane `lane` on the
// calling thread: its pooled features into `pooled`. One thread at a time per lane.
MN_EXPORT bool mn_engine_lane_run(void* l, int32_t lane, const float* x, float* pooled, char** err) {
  MN_PROTECT({
    auto* lanes = static_cast<Lanes*>(l);
    if (lane < 0 || static_cast<size_t>(lane) >= lanes->plans.size()) {
      throw std::invalid_argument("no lane " + std::to_string(lane));
    }
    Engine::run_lane(*lanes->plans[lane], x, pooled);
    return true;
  })
  return false;
}

// The head alone: `pooled` ([n, c]) to `out` ([n, width]).
MN_EXPORT bool mn_engine_head(void* e, const float* pooled, int64_t n, int64_t c, float* out,
                              int64_t width, char** err) {
  MN_PROTECT({
    as_engine(e)->run_head(pooled, n, c, out, width);
    return true;
  })
  return false;
}

}  // extern "C"

