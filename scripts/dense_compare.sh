#!/usr/bin/env bash
# The engine's classifier kernel (`Dense` in src/ffi/engine.cpp) against the oneDNN convolution it
# replaces (1x1 on [n, IN, 1, 1], the venv's oneDNN, `x64:gemm:jit` on x86), in one process,
# interleaved: the best of many runs with the weights in cache ("warm") and after 64 MB of other
# traffic ("cold", as in a forward pass, where the trunk evicts them), on 1 and 2 threads, for
# 1, 16 and 32 images. Prints the times and the largest difference between the two outputs.
#
#   bash scripts/dense_compare.sh [--in 1280] [--out 1000] [--smoke]
#
# --smoke: one image, one thread, three runs (for CI: it builds and agrees; no timing claims).
set -euo pipefail
cd "$(dirname "$0")/.."
IN=1280 OUT=1000 SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --in) IN="${2-}"; shift $(($# > 1 ? 2 : 1)) ;;
    --out) OUT="${2-}"; shift $(($# > 1 ? 2 : 1)) ;;
    --smoke) SMOKE=1; shift ;;
    *) echo "dense_compare.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for v in "in:$IN" "out:$OUT"; do
  if ! [[ "${v#*:}" =~ ^[1-9][0-9]{0,4}$ ]]; then
    echo "dense_compare.sh: --${v%%:*} takes a whole number from 1 to 99999, not '${v#*:}'" >&2
    exit 2
  fi
done
ROOT=${MOBILENET_DNNL_ROOT:-.venv}
CXX=${CXX:-g++}
if [ ! -e "$ROOT/include/oneapi/dnnl/dnnl.hpp" ] || [ ! -e "$ROOT/lib/libdnnl.so.3" ]; then
  echo "dense_compare.sh: no oneDNN in $ROOT (run make setup)" >&2
  exit 2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The kernel exactly as the engine has it.
{
  cat <<'HEAD'
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <omp.h>
#include <time.h>
#include <oneapi/dnnl/dnnl.hpp>
HEAD
  # engine.cpp's x86 switch, its activation codes and the kernel itself.
  awk '/^#if defined\(__x86_64__\)/{on=1} on{print} on&&/^#endif/{exit}' src/ffi/engine.cpp
  grep '^enum Act ' src/ffi/engine.cpp
  awk '/^struct Dense \{/{on=1} on{print} on&&/^\};/{exit}' src/ffi/engine.cpp
  cat <<'MAIN'
using namespace dnnl;
static double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(int argc, char** argv) {
  const int n = atoi(argv[1]), I = atoi(argv[2]), O = atoi(argv[3]), runs = atoi(argv[4]);
  Dense d;
  d.in = I, d.out = O, d.w.resize(size_t(I) * O), d.b.resize(O);
  for (size_t i = 0; i < d.w.size(); ++i) d.w[i] = 1e-3f * float((i * 7) % 13) - 6e-3f;
  for (int o = 0; o < O; ++o) d.b[o] = 1e-2f * float(o % 5);
  std::vector<float> x(size_t(n) * I), y(size_t(n) * O), y2(size_t(n) * O);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 17) / 17.f;
  const size_t flush = size_t(64) << 20;
  std::vector<char> other(flush);
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  using dt = memory::data_type;
  using tag = memory::format_tag;
  memory::desc sd({n, I, 1, 1}, dt::f32, tag::nchw), dd({n, O, 1, 1}, dt::f32, tag::nchw);
  memory::desc bd({O}, dt::f32, tag::x), wd({O, I, 1, 1}, dt::f32, tag::oihw);
  auto pd = convolution_forward::primitive_desc(
      eng, prop_kind::forward_inference, algorithm::convolution_direct, sd,
      memory::desc({O, I, 1, 1}, dt::f32, tag::any), bd, dd, memory::dims{1, 1},
      memory::dims{0, 0}, memory::dims{0, 0}, memory::dims{0, 0}, primitive_attr());
  memory wsrc(wd, eng, d.w.data()), wm(pd.weights_desc(), eng);
  reorder(wsrc, wm).execute(st, wsrc, wm);
  st.wait();
  memory sm(sd, eng, x.data()), dm(dd, eng, y2.data()), bm(bd, eng, d.b.data());
  convolution_forward conv(pd);
  auto run = [&](int dense) {
    if (dense) {
      d.run(x.data(), y.data(), n);
    } else {
      conv.execute(st, {{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm},
                        {DNNL_ARG_DST, dm}});
      st.wait();
    }
  };
  double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}};  // [dense][cold]
  for (int cold = 0; cold < 2; ++cold) {
    for (int r = 0; r < runs; ++r) {
      for (int dense = 0; dense < 2; ++dense) {
        if (cold) {
          volatile char* o = other.data();  // volatile: the flushing writes are kept
          for (size_t k = 0; k < flush; k += 64) o[k] = o[k] + 1;
        }
        const double t = now();
        run(dense);
        best[dense][cold] = std::min(best[dense][cold], now() - t);
      }
    }
  }
  float diff = 0;
  size_t bad = 0;  // NaN counts as a difference
  for (size_t i = 0; i < y.size(); ++i) {
    const float e = std::fabs(y[i] - y2[i]);
    if (!(e <= 1e-4f)) ++bad;
    if (e > diff) diff = e;
  }
  printf("%3d images %d threads  oneDNN (%s) %.3f warm %.3f cold   Dense %.3f warm %.3f cold ms"
         "   max |difference| %.2g\n",
         n, omp_get_max_threads(), pd.impl_info_str(), best[0][0] * 1e3, best[0][1] * 1e3,
         best[1][0] * 1e3, best[1][1] * 1e3, diff);
  if (bad > 0) fprintf(stderr, "%zu outputs differ by more than 1e-4 (or are NaN)\n", bad);
  return bad == 0 ? 0 : 1;
}
MAIN
} > "$WORK/dense.cpp"
"$CXX" -O3 -std=c++17 -fopenmp -isystem "$ROOT/include" "$WORK/dense.cpp" -o "$WORK/dense" \
  -L"$ROOT/lib" -ldnnl -Wl,-rpath,"$(cd "$ROOT/lib" && pwd)"
echo "Dense against oneDNN, ${IN} -> ${OUT}: $(lscpu | sed -n 's/^Model name: *//p'), flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
if [ "$SMOKE" = 1 ]; then
  OMP_NUM_THREADS=1 "$WORK/dense" 1 "$IN" "$OUT" 3
  exit 0
fi
for threads in 1 2; do
  for n in 1 16 32; do
    OMP_NUM_THREADS=$threads "$WORK/dense" "$n" "$IN" "$OUT" 30
  done
done
