#!/usr/bin/env python3
"""Ours against ONNX Runtime on one thread and on more, side by side in one run: how much each
gains from the extra threads.

  .venv/bin/python3 scripts/thread_scaling.py [--arch mobilenet_v2] [--threads 1,2]
      [--batch-size 1] [--rounds 5] [--iters 40] [--smoke]

Both run the same seeded weights (weights/export.py): ours as `mobilenet bench --threads T`
(its defaults: folded, fused, oneDNN Graph) in its own process, ONNX Runtime as a session with
`intra_op_num_threads = T` and `inter_op_num_threads = 1`. Every round times each thread count
for both, so a slow spell of the machine hits all of them; the table shows the median of the
rounds' p50s, the range over the rounds, ours/ORT per thread count, and each one's speed-up from
the fewest threads to each count. --smoke (CI): one round of one iteration; its numbers claim
nothing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import bench_compare
from bench_compare import ROOT, cpu_name, export_onnx, median, ort_session, timeit


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mobilenet_v2")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--binary", default=os.path.join(ROOT, "target/release/mobilenet"))
    p.add_argument("--smoke", action="store_true", help="CI: one round of one iteration")
    args = p.parse_args()
    try:
        counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads: {args.threads!r} is not a comma-separated list of thread counts")
    if not counts or min(counts) < 1:
        p.error(f"--threads: {args.threads!r}: every count must be at least 1")
    if args.smoke:
        args.rounds, args.iters, args.warmup = 1, 1, 0
    bench_compare.ensure_ort()

    import numpy as np
    import onnxruntime as ort
    import torch
    from export import save_weights, seeded

    tmp = tempfile.mkdtemp(prefix="thread-scaling-")
    model = seeded(args.arch, 1.0, "batch", 1000, 0).eval()
    weights = os.path.join(tmp, "weights.safetensors")
    save_weights(model, weights)
    onnx_path = os.path.join(tmp, "model.onnx")
    export_onnx(model, onnx_path)
    x = np.random.default_rng(0).standard_normal((args.batch_size, 3, 224, 224), dtype=np.float32)

    def ours(threads):
        cmd = [args.binary, "bench", "--arch", args.arch, "--weights", weights, "--device", "cpu",
               "--batch-sizes", str(args.batch_size), "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--threads", str(threads), "--json"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out)["results"][0]["p50_ms"]

    def onnxruntime(threads):
        sess = ort_session(onnx_path, threads)
        return timeit(lambda: sess.run(None, {"x": x}), args.warmup, args.iters)["p50_ms"]

    p50 = {(who, t): [] for who in ("ours", "ort") for t in counts}
    for r in range(args.rounds):
        print(f"thread_scaling: round {r + 1}/{args.rounds}", file=sys.stderr)
        for t in counts:
            p50[("ours", t)].append(ours(t))
            p50[("ort", t)].append(onnxruntime(t))
    med = {k: median(v) for k, v in p50.items()}
    print(f"{args.arch}, batch {args.batch_size}, fp32, {args.iters} iterations x {args.rounds} "
          f"interleaved rounds (median p50, range over the rounds), on {cpu_name()} "
          f"({os.cpu_count()} cores); torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{'threads':>7} {'ours ms':>22} {'ORT ms':>22} {'ours/ORT':>9} {'speed-up ours':>14} {'speed-up ORT':>13}")
    base = counts[0]
    rows = []
    for t in counts:
        o, e = p50[("ours", t)], p50[("ort", t)]
        row = {"threads": t, "ours_p50_ms": med[("ours", t)], "ort_p50_ms": med[("ort", t)],
               "ours_per_round": o, "ort_per_round": e,
               "ours_over_ort": med[("ours", t)] / med[("ort", t)],
               "ours_speedup": med[("ours", base)] / med[("ours", t)],
               "ort_speedup": med[("ort", base)] / med[("ort", t)]}
        rows.append(row)
        print(f"{t:>7} {row['ours_p50_ms']:>8.2f} ({min(o):.2f}-{max(o):.2f}) "
              f"{row['ort_p50_ms']:>8.2f} ({min(e):.2f}-{max(e):.2f}) {row['ours_over_ort']:>8.2f}x "
              f"{row['ours_speedup']:>13.2f}x {row['ort_speedup']:>12.2f}x")
    if args.smoke:
        print("thread_scaling --smoke: one iteration with no warm-up; these numbers claim nothing")
    print(json.dumps({"arch": args.arch, "batch_size": args.batch_size, "rounds": args.rounds,
                      "iters": args.iters, "cpu": cpu_name(), "rows": rows}))


if __name__ == "__main__":
    main()
