#!/usr/bin/env python3
"""Side-by-side CPU benchmark: our `mobilenet bench` against PyTorch eager (contiguous and
channels-last), TorchScript freeze + optimize_for_inference, and ONNX Runtime, on the same
weights, threads and batch sizes, in one sequence on one machine.

  .venv/bin/python3 scripts/bench_compare.py [--arch mobilenet_v2] [--batch-sizes 1,16]
      [--threads 2] [--iters 30] [--warmup 5] [--rounds 3] [--out bench-results/compare-ARCH.json]

Every implementation runs once per round and the rounds interleave, so that a slow spell of a
shared machine hits all of them; the table shows the median p50 over the rounds. One more row runs
PyTorch eager channels-last in a child process with glibc malloc set as `mobilenet bench` sets it
(GLIBC_TUNABLES), to show how much of the gap is the allocator.

It also bounds the machine's fp32 compute rate from above (`ceiling()`): the larger of the ISA's
peak (FLOP per cycle per core, from the /proc/cpuinfo flags, times the clock measured by a
dependent chain of adds, times the threads) and the best large GEMM (2048x2048 `torch.mm`, each
round), counts the model's FLOPs (`torch.utils.flop_counter`), and prints the time no
implementation can beat at that rate and the share of it each implementation reaches. Should any
implementation run faster than the ceiling allows, it prints a warning that the ceiling is wrong
instead of a share above 100%.

With --precisions fp32,bf16 (what `make bench` runs) it then times bf16: ours
(`mobilenet bench --precision bf16`) and PyTorch eager channels-last in bf16, each against ONNX
Runtime's fp32 of the same run and against each other. On a CPU without native bf16
(`avx512_bf16` or `amx_bf16` in /proc/cpuinfo) both widen bf16 to fp32 and are tens of times
slower than fp32: those rows are labelled "emulated" and run --bf16-iters iterations (default 3)
after one warm-up, in one round.

Last, it says which targets of issue 19 this run meets: fp32 at most 0.8x ONNX Runtime (or, where
ONNX Runtime already reaches 80% of the ceiling, at least 90% of it), and for V2 and V3 Large bf16
at most 0.5x ONNX Runtime's fp32 where bf16 is native. The fp32 verdict is on the medians; next
to it, the ratio of ours to ONNX Runtime in each round (the spread the machine's noise gives),
and whether the target held in every round.

--smoke (for CI): one round of one iteration after no warm-up, batch 1, fp32 and bf16, the JSON
into a temporary folder unless --out names a file; it checks that every path runs, and its numbers
claim nothing.

Installs onnxruntime and onnx into the venv when missing (only this script needs them).
Prints each p50 latency and the ratio ours/theirs, and writes everything as JSON.
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "weights"))

ORT_PINS = ["onnxruntime==1.32.0", "onnx==1.23.2"]


def ensure_ort():
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        return
    print("bench_compare: installing " + " ".join(ORT_PINS), file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *ORT_PINS], check=True)


def timeit(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "min_ms": times[0],
        "p50_ms": times[len(times) // 2],
        "p90_ms": times[min(len(times) - 1, round((len(times) - 1) * 0.9))],
    }


def export_onnx(model, path):
    """`model` as ONNX at `path`, input `x` with a dynamic batch, output `logits`."""
    import torch

    torch.onnx.export(model, torch.randn(1, 3, 224, 224), path, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}}, dynamo=False)


def ort_session(path, threads):
    """An ONNX Runtime CPU session of `path` on `threads` intra-op threads, no inter-op ones."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def common_args(args, iters, warmup):
    """The model, threads, batch sizes and iterations, as both `mobilenet bench` and the eager
    child process take them."""
    return ["--arch", args.arch, "--width-mult", str(args.width_mult), "--threads", str(args.threads),
            "--batch-sizes", args.batch_sizes, "--iters", str(iters), "--warmup", str(warmup)]


def bf16_native(flags):
    """Whether the CPU computes bf16 natively (what `mobilenet info` reports as native)."""
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def fp32_flop_per_cycle(flags):
    """Peak fp32 FLOP per cycle per core the ISA allows, an upper bound: (FMA units) x (fp32 lanes)
    x 2, and why."""
    if "avx512f" in flags:
        # Two 512-bit FMA units: Intel's server cores (Skylake-SP and later, 2 units) and Zen 5.
        # Zen 4 splits a 512-bit FMA over its two 256-bit units and some Intel parts have one
        # 512-bit unit (32 there), so this may be twice their peak: still a ceiling.
        return 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2 (two 512-bit units assumed, the most any core has)"
    if "avx2" in flags and "fma" in flags:
        # Haswell and later, Zen 2 and later: two 256-bit FMA units (Zen 1 has 2x128: 16).
        return 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2"
    if "avx" in flags:
        return 16, "AVX: 1 add + 1 mul unit x 8 fp32 lanes"
    return 8, "SSE: 1 add + 1 mul unit x 4 fp32 lanes"


# A chain of dependent register adds: one per cycle on every x86 core (`add reg, reg` is not
# eliminated at rename), so adds per second is the clock. The best of 50 runs of 1e7 adds.
CLOCK_PROBE = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
  unsigned long x = 0, one = 1; double best = 0;
  for (int trial = 0; trial < 50; trial++) {
    double t0 = now();
    for (long i = 0; i < 100000; i++) {
#define A "add %1, %0\n\t"
#define A10 A A A A A A A A A A
      __asm__ volatile(A10 A10 A10 A10 A10 A10 A10 A10 A10 A10 : "+r"(x) : "r"(one));
    }
    double hz = 1e7 / (now() - t0);
    if (hz > best) best = hz;
  }
  printf("%.1f\n", best / 1e6);
  return x == 0;
}
"""


def clock_mhz():
    """The core clock in MHz and how it was found: measured by CLOCK_PROBE (compiled with cc), or,
    without a C compiler or off x86, the highest `cpu MHz` in /proc/cpuinfo (a nominal figure
    that boost clocks can exceed; the GEMM then keeps the ceiling honest)."""
    tmp = tempfile.mkdtemp(prefix="clock-probe-")
    src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
    with open(src, "w") as f:
        f.write(CLOCK_PROBE)
    try:
        if platform.machine() in ("x86_64", "AMD64"):
            subprocess.run(["cc", "-O2", src, "-o", exe], check=True, capture_output=True)
            out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
            return float(out), "measured: a dependent add chain"
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    mhz = []
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":", 1)[1]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError):
        pass
    return (max(mhz), "nominal: /proc/cpuinfo cpu MHz") if mhz else (None, "unknown")


def isa_peak(threads):
    """The ISA's fp32 peak on `threads` cores in GFLOP/s (None when the clock is unknown), and the
    terms it is made of."""
    flops, why = fp32_flop_per_cycle(cpu_flags())
    mhz, how = clock_mhz()
    cores = min(threads, os.cpu_count() or threads)
    gflops = flops * mhz / 1e3 * cores if mhz else None
    return gflops, {"flop_per_cycle_per_core": flops, "isa": why, "clock_mhz": mhz, "clock": how,
                    "cores": cores, "gflops": gflops}


MALLOC_AS_OURS = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


def eager_cl_worker(args):
    """Child process: PyTorch eager channels-last under GLIBC_TUNABLES=MALLOC_AS_OURS (the settings
    `mobilenet::alloc::keep_freed_memory` makes), printing its timings as JSON."""
    import torch
    from export import seeded

    torch.set_num_threads(args.threads)
    cl = torch.channels_last
    model = seeded(args.arch, args.width_mult, "batch", 1000, 0).to(memory_format=cl)
    out = {}
    with torch.no_grad():
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            x = torch.randn(bs, 3, 224, 224).contiguous(memory_format=cl)
            out[bs] = timeit(lambda: model(x), args.warmup, args.iters)
    print(json.dumps(out))


def bench_bf16(args, weights, batch_sizes, ort_p50, ours_fp32_p50):
    """Ours and PyTorch eager channels-last in bf16, on the same weights and threads; printed
    against ONNX Runtime's fp32 (`ort_p50`, None without it) and our fp32 of this run."""
    import torch
    from export import seeded

    native = bf16_native(cpu_flags())
    iters = args.bf16_iters or (args.iters if native else 3)
    warmup, rounds = (args.warmup, args.rounds) if native else (min(1, args.warmup), 1)
    cl = torch.channels_last
    model = seeded(args.arch, args.width_mult, "batch", 1000, 0).eval().to(memory_format=cl)
    model = model.to(torch.bfloat16)
    timings = {}  # name -> batch -> [timing per round]
    ours_compute = None
    cmd = [args.binary, "bench", *common_args(args, iters, warmup), "--weights", weights, "--device", "cpu",
           "--precision", "bf16", "--json"]
    for r in range(rounds):
        print(f"bench_compare: bf16 round {r + 1}/{rounds}", file=sys.stderr)
        ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ours_compute = ours.get("bf16_compute")
        for row in ours["results"]:
            timings.setdefault("mobilenet (ours) bf16", {}).setdefault(row["batch_size"], []).append(row)
        with torch.no_grad():
            for bs in batch_sizes:
                x = torch.randn(bs, 3, 224, 224).to(torch.bfloat16).contiguous(memory_format=cl)
                timings.setdefault("pytorch eager channels-last bf16", {}).setdefault(bs, []).append(
                    timeit(lambda: model(x), warmup, iters))
    p50 = {name: {bs: median(t["p50_ms"] for t in ts) for bs, ts in rows.items()}
           for name, rows in timings.items()}
    ours_p50 = p50["mobilenet (ours) bf16"]
    how = "native" if native else "emulated (no avx512_bf16 or amx_bf16: bf16 widened to fp32)"
    print(f"bf16, {how}; ours reports bf16 compute: {ours_compute}; {iters} iterations after {warmup} "
          f"warm-up x {rounds} round(s)")
    print(f"{'implementation':<46} {'batch':>5} {'p50 ms':>9} {'/ORT fp32':>10} {'/our fp32':>10} "
          f"{'ours/this':>10}")
    rows = []
    for name, by_bs in p50.items():
        for bs in batch_sizes:
            ms = by_bs[bs]
            vs_ort = ms / ort_p50[bs] if ort_p50 else None
            row = {"implementation": name, "batch_size": bs, "p50_ms": ms, "over_ort_fp32": vs_ort,
                   "over_ours_fp32": ms / ours_fp32_p50[bs], "ours_over_this": ours_p50[bs] / ms}
            rows.append(row)
            ort_text = f"{vs_ort:>9.2f}x" if vs_ort is not None else f"{'-':>10}"
            print(f"{name:<46} {bs:>5} {ms:>9.2f} {ort_text} {row['over_ours_fp32']:>9.2f}x "
                  f"{row['ours_over_this']:>9.2f}x")
    return {"native": native, "ours_bf16_compute": ours_compute, "iters": iters, "warmup": warmup,
            "rounds": rounds, "table": rows,
            "ours_over_ort_fp32": ({bs: ours_p50[bs] / ort_p50[bs] for bs in batch_sizes}
                                   if ort_p50 else None)}


def issue19_targets(arch, batch_sizes, mine, ort, ort_share, our_share, bf16, quiet=False):
    """Returns, per batch size, whether this run meets issue 19's targets; prints them unless
    `quiet` (a smoke's numbers judge nothing). `mine` and `ort` hold each batch size's median
    p50 and its p50 per round. The verdict is on the medians; the ratio of each round's p50s
    (the two ran minutes apart at most, in the same round) shows how far the noise moves it."""
    say = (lambda *a, **k: None) if quiet else print
    verdicts = {"fp32": {}, "bf16": {}}
    for bs in batch_sizes:
        ratio = mine[bs]["p50_ms"] / ort[bs]["p50_ms"]
        per_round = [o / t for o, t in zip(mine[bs]["p50_ms_per_round"], ort[bs]["p50_ms_per_round"])]
        if ort_share is not None and ort_share[bs] > 0.8:
            met = our_share is not None and our_share[bs] >= 0.9
            rule = f"ONNX Runtime at {ort_share[bs]:.0%} of the ceiling: ours at least 90% of it"
            every_round = None
        else:
            met = ratio <= 0.8
            rule = "ours at most 0.8x ONNX Runtime"
            every_round = all(r <= 0.8 for r in per_round)
        verdicts["fp32"][bs] = {"ours_over_ort": ratio, "ours_over_ort_per_round": per_round,
                                "rule": rule, "met": met, "met_in_every_round": every_round}
        rounds = f"per round {min(per_round):.2f}-{max(per_round):.2f}x"
        if every_round is not None:
            rounds += f", at most 0.8x in {sum(r <= 0.8 for r in per_round)} of {len(per_round)} rounds"
        say(f"target fp32, batch {bs}: {rule}: ours/ORT {ratio:.2f}x ({rounds}): "
            f"{'met' if met else 'NOT met'}")
    for bs in batch_sizes:
        if arch not in ("mobilenet_v2", "mobilenet_v3_large"):
            continue
        if bf16 is None:
            verdict = {"met": None, "why": "bf16 not run (--precisions)"}
        elif not bf16["native"]:
            verdict = {"met": None, "why": "not applicable: this CPU has no native bf16"}
        else:
            ratio = bf16["ours_over_ort_fp32"][bs]
            verdict = {"ours_bf16_over_ort_fp32": ratio, "met": ratio <= 0.5}
        verdicts["bf16"][bs] = verdict
        text = verdict.get("why") or (f"ours bf16/ORT fp32 {verdict['ours_bf16_over_ort_fp32']:.2f}x: "
                                      + ("met" if verdict["met"] else "NOT met"))
        say(f"target bf16 (at most 0.5x ONNX Runtime fp32), batch {bs}: {text}")
    return verdicts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mobilenet_v2")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3,
                   help="run every implementation this many times, interleaved; report the median p50")
    p.add_argument("--binary", default=os.path.join(ROOT, "target/release/mobilenet"))
    p.add_argument("--out")
    p.add_argument("--skip-ort", action="store_true")
    p.add_argument("--precisions", default="fp32",
                   help="fp32, or fp32,bf16 to time bf16 after fp32 (make bench)")
    p.add_argument("--bf16-iters", type=int,
                   help="bf16 iterations (default: --iters where bf16 is native, else 3)")
    p.add_argument("--smoke", action="store_true",
                   help="CI: batch 1, one round of one iteration, fp32 and bf16; numbers claim nothing")
    p.add_argument("--eager-cl-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    unknown = set(args.precisions.split(",")) - {"fp32", "bf16"}
    if unknown or "fp32" not in args.precisions.split(","):
        p.error(f"--precisions: {args.precisions!r} is not fp32 or fp32,bf16")
    if args.smoke:
        args.batch_sizes, args.rounds, args.iters, args.warmup = "1", 1, 1, 0
        args.precisions, args.bf16_iters = "fp32,bf16", 1
        args.out = args.out or os.path.join(tempfile.mkdtemp(prefix="bench-smoke-"), "compare.json")
    if args.eager_cl_worker:
        return eager_cl_worker(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if not args.skip_ort:
        ensure_ort()

    import torch
    from export import save_weights, seeded

    torch.set_num_threads(args.threads)
    model = seeded(args.arch, args.width_mult, "batch", 1000, 0)
    tmp = tempfile.mkdtemp(prefix="bench-compare-")
    weights = os.path.join(tmp, "weights.safetensors")
    save_weights(model, weights)

    cl = torch.channels_last
    scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model.eval())))
    model_cl = seeded(args.arch, args.width_mult, "batch", 1000, 0).to(memory_format=cl)
    impls = {
        "pytorch eager": lambda x: model(x),
        "pytorch eager channels-last": lambda x: model_cl(x.contiguous(memory_format=cl)),
        "torchscript optimize_for_inference": lambda x: scripted(x),
    }
    sess = None
    if not args.skip_ort:
        import onnxruntime as ort

        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(model, onnx_path)
        sess = ort_session(onnx_path, args.threads)
        ort_name = f"onnxruntime {ort.__version__}"
    tuned_name = "pytorch eager channels-last, malloc as ours"

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    flops = counter.get_total_flops()  # per image at 224
    gemm_n = 2048
    a, b = torch.randn(gemm_n, gemm_n), torch.randn(gemm_n, gemm_n)
    gemm_gflops = []

    rounds = {}  # impl -> batch -> [timing per round]

    def record(name, bs, timing):
        rounds.setdefault(name, {}).setdefault(bs, []).append(timing)

    ours = None
    common = common_args(args, args.iters, args.warmup)
    for r in range(args.rounds):
        print(f"bench_compare: round {r + 1}/{args.rounds}", file=sys.stderr)
        # Ours, in its own process (its own libtorch thread pool).
        cmd = [args.binary, "bench", *common, "--weights", weights, "--device", "cpu", "--json"]
        ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        for row in ours["results"]:
            record("mobilenet (ours)", row["batch_size"], row)
        mm = timeit(lambda: torch.mm(a, b), 1, 5)
        gemm_gflops.append(2 * gemm_n ** 3 / (mm["min_ms"] / 1e3) / 1e9)
        with torch.no_grad():
            for name, fn in impls.items():
                for bs in batch_sizes:
                    x = torch.randn(bs, 3, 224, 224)
                    record(name, bs, timeit(lambda: fn(x), args.warmup, args.iters))
        if sess is not None:
            for bs in batch_sizes:
                x = torch.randn(bs, 3, 224, 224).numpy()
                record(ort_name, bs, timeit(lambda: sess.run(None, {"x": x}), args.warmup, args.iters))
        env = {**os.environ, "GLIBC_TUNABLES": MALLOC_AS_OURS}
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--eager-cl-worker", *common],
                               check=True, capture_output=True, text=True, env=env)
        for bs, timing in json.loads(child.stdout.strip().splitlines()[-1]).items():
            record(tuned_name, int(bs), timing)

    results = {name: {bs: {"p50_ms": median([t["p50_ms"] for t in ts]),
                           "min_ms": min(t["min_ms"] for t in ts),
                           "p90_ms": median([t["p90_ms"] for t in ts]),
                           "p50_ms_per_round": [t["p50_ms"] for t in ts]}
                      for bs, ts in rows.items()}
               for name, rows in rounds.items()}
    mine = results["mobilenet (ours)"]
    print(f"{args.arch} width {args.width_mult}, fp32 CPU, {args.threads} threads, {args.iters} iterations "
          f"x {args.rounds} interleaved rounds (median p50), on {cpu_name()} ({os.cpu_count()} cores); "
          f"torch {torch.__version__}")
    print(f"{'implementation':<46} {'batch':>5} {'p50 ms':>9} {'ours/theirs':>12}")
    table = []
    for name, rows in results.items():
        for bs in batch_sizes:
            r = rows[bs]
            ratio = mine[bs]["p50_ms"] / r["p50_ms"]
            table.append({"implementation": name, "batch_size": bs, "p50_ms": r["p50_ms"],
                          "p90_ms": r["p90_ms"], "p50_ms_per_round": r["p50_ms_per_round"],
                          "ours_over_theirs": ratio})
            print(f"{name:<46} {bs:>5} {r['p50_ms']:>9.2f} {ratio:>11.2f}x")
    isa_gflops, isa = isa_peak(args.threads)
    ceiling = max(g for g in (isa_gflops, max(gemm_gflops)) if g is not None)
    floor_ms = flops / (ceiling * 1e9) * 1e3
    # Each implementation's best rate (its fastest iteration) against the ceiling: above it, the
    # ceiling is wrong and no share is printed.
    over = [(name, bs, flops * bs / (rows[bs]["min_ms"] / 1e3) / 1e9)
            for name, rows in results.items() for bs in batch_sizes]
    over = [(name, bs, rate) for name, bs, rate in over if rate > ceiling]
    shares = {name: {bs: floor_ms * bs / rows[bs]["p50_ms"] for bs in batch_sizes}
              for name, rows in results.items()}
    roofline = {"ceiling_gflops": ceiling, "isa_peak": isa, "gemm": f"{gemm_n}x{gemm_n} torch.mm",
                "gemm_gflops": max(gemm_gflops), "gemm_gflops_per_round": gemm_gflops,
                "model_gflop_per_image": flops / 1e9, "floor_ms_per_image": floor_ms,
                "ceiling_exceeded_by": [{"implementation": n, "batch_size": b, "gflops": r} for n, b, r in over],
                "share_of_ceiling": None if over else shares,
                "ours_share_of_ceiling": None if over else shares["mobilenet (ours)"]}
    isa_text = (f"{isa['flop_per_cycle_per_core']} FLOP/cycle/core ({isa['isa']}) x {isa['clock_mhz']:.0f} MHz "
                f"({isa['clock']}) x {isa['cores']} cores = {isa_gflops:.0f} GFLOP/s"
                if isa_gflops else f"ISA peak unknown ({isa['isa']}, clock unknown)")
    print(f"fp32 ceiling: {ceiling:.0f} GFLOP/s, the larger of the ISA peak, {isa_text}, and the best "
          f"{gemm_n}x{gemm_n} torch.mm, {max(gemm_gflops):.0f} GFLOP/s ({args.threads} threads); "
          f"{args.arch}: {flops / 1e9:.3f} GFLOP per 224x224 image, so at least {floor_ms:.2f} ms "
          f"per image at that rate")
    if over:
        print("WARNING: the ceiling is wrong: " + ", ".join(
            f"{n} at batch {b} ran at {r:.0f} GFLOP/s" for n, b, r in over) + f", above {ceiling:.0f}; "
              "no share of it is printed")
    else:
        for name in ["mobilenet (ours)", *([ort_name] if sess is not None else [])]:
            print(f"{name} reaches " + ", ".join(f"{share:.0%} of it at batch {bs}"
                                                  for bs, share in shares[name].items()))
    ort_p50 = ({bs: results[ort_name][bs]["p50_ms"] for bs in batch_sizes} if sess is not None else None)
    bf16 = None
    if "bf16" in args.precisions.split(","):
        bf16 = bench_bf16(args, weights, batch_sizes, ort_p50, {bs: mine[bs]["p50_ms"] for bs in batch_sizes})
    targets = None
    if ort_p50 is not None:
        ort_share = None if over else shares[ort_name]
        targets = issue19_targets(args.arch, batch_sizes, mine, results[ort_name], ort_share,
                                  None if over else shares["mobilenet (ours)"], bf16, quiet=args.smoke)
    if args.smoke:
        print("bench_compare --smoke: one iteration with no warm-up; these numbers claim nothing")
    out = args.out or os.path.join(ROOT, "bench-results", f"compare-{args.arch}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"arch": args.arch, "width_mult": args.width_mult, "threads": args.threads,
                   "iters": args.iters, "rounds": args.rounds, "cpu": cpu_name(), "cores": os.cpu_count(),
                   "torch": torch.__version__, "ours": ours, "table": table, "roofline": roofline,
                   "bf16": bf16, "targets": targets}, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
