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

It also measures the machine's fp32 compute ceiling (the fastest of 20 1024x1024 `torch.mm`s
on the same threads, each round; the best round) and counts the model's FLOPs (`torch.utils.flop_counter`), and prints the time no
implementation can beat at that rate and the share of it each batch size of ours reaches.

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


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
    p.add_argument("--eager-cl-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
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
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), onnx_path, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        ort_name = f"onnxruntime {ort.__version__}"
    tuned_name = "pytorch eager channels-last, malloc as ours"

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    flops = counter.get_total_flops()  # per image at 224
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mm_gflops = []

    rounds = {}  # impl -> batch -> [timing per round]

    def record(name, bs, timing):
        rounds.setdefault(name, {}).setdefault(bs, []).append(timing)

    ours = None
    common = ["--arch", args.arch, "--width-mult", str(args.width_mult), "--threads", str(args.threads),
              "--batch-sizes", args.batch_sizes, "--iters", str(args.iters), "--warmup", str(args.warmup)]
    for r in range(args.rounds):
        print(f"bench_compare: round {r + 1}/{args.rounds}", file=sys.stderr)
        # Ours, in its own process (its own libtorch thread pool).
        cmd = [args.binary, "bench", *common, "--weights", weights, "--device", "cpu", "--json"]
        ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        for row in ours["results"]:
            record("mobilenet (ours)", row["batch_size"], row)
        mm = timeit(lambda: torch.mm(a, b), max(args.warmup, 3), max(args.iters, 20))
        mm_gflops.append(2 * 1024 ** 3 / (mm["min_ms"] / 1e3) / 1e9)
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

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    results = {name: {bs: {"p50_ms": median([t["p50_ms"] for t in ts]),
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
    ceiling = max(mm_gflops)  # the best rate seen: a ceiling
    floor_ms = flops / (ceiling * 1e9) * 1e3
    roofline = {"matmul_gflops": ceiling, "matmul_gflops_per_round": mm_gflops,
                "model_gflop_per_image": flops / 1e9, "floor_ms_per_image": floor_ms,
                "ours_share_of_ceiling": {bs: floor_ms * bs / mine[bs]["p50_ms"] for bs in batch_sizes}}
    print(f"fp32 ceiling: {ceiling:.0f} GFLOP/s (torch.mm 1024x1024, {args.threads} threads); "
          f"{args.arch}: {flops / 1e9:.3f} GFLOP per 224x224 image, so at least {floor_ms:.2f} ms "
          f"per image at that rate")
    print("ours reaches " + ", ".join(f"{share:.0%} of it at batch {bs}"
                                       for bs, share in roofline["ours_share_of_ceiling"].items()))
    out = args.out or os.path.join(ROOT, "bench-results", f"compare-{args.arch}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"arch": args.arch, "width_mult": args.width_mult, "threads": args.threads,
                   "iters": args.iters, "rounds": args.rounds, "cpu": cpu_name(), "cores": os.cpu_count(),
                   "torch": torch.__version__, "ours": ours, "table": table, "roofline": roofline}, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
