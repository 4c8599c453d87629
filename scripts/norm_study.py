#!/usr/bin/env python3
"""The design notes' claim, measured: BatchNorm against GroupNorm, LayerNorm and InstanceNorm as
the batch shrinks (issue #17), with `mobilenet train` on scikit-learn's digits.

    make norm-study                      # the whole study (about 40 min on 2 cores)
    .venv/bin/python3 scripts/norm_study.py --smoke   # one cell, a few steps (CI)
    .venv/bin/python3 scripts/norm_study.py --replicas 4            # the data-parallel column
    .venv/bin/python3 scripts/norm_study.py --replicas 4 --smoke    # its cells, 3 steps each

Every cell (norm x batch size x seed) trains the same MobileNetV2 (width 0.5, 48x48 inputs, 10
classes) from scratch with our `train` command: SGD with momentum 0.9, weight decay 4e-5, a cosine
schedule, the learning rate scaled linearly with the batch (base 0.0125 at batch 32, as Goyal et al.
and the GroupNorm paper scale it), `--augment none`, and the same number of epochs, so that every
run sees the same images. GroupNorm uses G = 8 groups: the largest G that divides every layer's
channels of MobileNetV2 at width 1.0 (24 and 144 rule out 16 and 32) and at width 0.5 (whose
narrowest layer has 8 channels, so there GroupNorm is per channel).

The validation error is measured here, in PyTorch, from the `model.pth` each run writes (loaded
strictly into torchvision's `mobilenet_v2` with the same norm layer): eval mode, the 360 held-out
digits at their native 48x48. BatchNorm runs are also evaluated in train mode (batch statistics
over batches of the training batch size), the mechanism the notes describe: running statistics
accumulated from tiny batches against the statistics of the batch at hand.

With `--replicas R`, the data-parallel column instead (issue #18): `--batches` are images per
replica (default 2), each run is R processes of `train` under `torchrun --no-python` (Gloo over
loopback), the learning rate scaled by the global batch (R x per-replica), and the cells are
BatchNorm (each replica normalizes over its own images; DDP broadcasts rank 0's running
statistics), BatchNorm with `--sync-bn` (normalized over all R replicas' images) and GroupNorm.
It writes bench-results/norm-study-replicas.json and no plot.

Writes bench-results/norm-study.json (settings, machine, every run, mean and std per cell, the
paper's numbers) and docs/norm-study.png (validation error against batch size, one line per norm,
the paper's BN and GN lines beside ours). Installs scikit-learn and matplotlib into the venv when
missing; the digits are generated under bench-results/, never committed.
"""

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MOBILENET_BIN", os.path.join(ROOT, "target", "release", "mobilenet"))
sys.path.insert(0, os.path.join(ROOT, "weights"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# Wu & He, "Group Normalization", ECCV 2018, Table/Figure: ResNet-50 on ImageNet, top-1
# validation error (%) by images per GPU.
PAPER = {
    "source": "Wu & He, Group Normalization, ECCV 2018 (ResNet-50, ImageNet, top-1 val error %)",
    "batch": [32, 16, 8, 4, 2],
    "batch_norm": [23.6, 23.7, 24.8, 27.3, 34.7],
    "group_norm": [24.1, 24.2, 24.0, 24.2, 24.1],
    "at_32": {"layer_norm": 25.3, "instance_norm": 28.4},
}


def ensure(module, package):
    import importlib.util

    if importlib.util.find_spec(module) is None:
        print(f"norm_study: installing {package}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", package], check=True)


def machine():
    flags = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not flags:
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = [x for x in line.split(":", 1)[1].split()
                             if x.startswith(("avx", "amx", "fma"))]
                    break
    except OSError:
        name = platform.processor()
    return {"cpu": name, "flags": sorted(set(flags)), "cores": os.cpu_count()}


# A replica-mode cell's label: the norm, and `--sync-bn` for synchronized BatchNorm.
SYNC = "batch --sync-bn"


def train(cell, args, data, runs):
    label, batch, seed = cell
    norm = "batch" if label == SYNC else label
    replicas = args.replicas or 1
    name = f"{label.replace(':', '').replace(' --', '-')}-b{batch}-s{seed}"
    out = os.path.join(runs, name if replicas == 1 else f"r{replicas}-{name}")
    if os.path.exists(os.path.join(out, "model.pth")) and args.reuse:
        return cell, out, None
    subprocess.run(["rm", "-rf", out], check=True)
    # Linear scaling with the global batch.
    lr = args.base_lr * batch * replicas / 32
    cmd = [BIN]
    if replicas > 1:
        cmd = [os.path.join(ROOT, ".venv", "bin", "torchrun"), "--no-python", "--standalone",
               "--nproc-per-node", str(replicas), BIN]
    cmd += ["train", "--arch", "mobilenet_v2", "--width-mult", str(args.width),
           "--norm", norm, "--data", os.path.join(data, "train"),
           "--val", os.path.join(data, "val"), "--resolution", str(args.resolution),
           "--batch-size", str(batch), "--lr", repr(lr), "--momentum", "0.9",
           "--weight-decay", "4e-5", "--schedule", "cosine", "--augment", "none",
           "--seed", str(seed), "--device", "cpu", "--threads", "1", "--workers", "1",
           "--out", out, "--json"]
    cmd += ["--steps", str(args.steps)] if args.steps else ["--epochs", str(args.epochs)]
    if label == SYNC:
        cmd.append("--sync-bn")
    started = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.time() - started
    if run.returncode != 0:
        return cell, out, f"exit {run.returncode}: {run.stderr.strip()[-400:]}"
    return cell, out, seconds


def evaluate(norm, out, data, args, train_mode_batch=None):
    """Top-1 error (%) of OUT/model.pth on the validation digits, in PyTorch."""
    import numpy as np
    import torch
    from PIL import Image
    from export import build

    model = build("mobilenet_v2", args.width, norm, 10)
    model.load_state_dict(torch.load(os.path.join(out, "model.pth"), weights_only=True))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    classes = sorted(os.listdir(os.path.join(data, "val")))
    xs, ys = [], []
    for label, c in enumerate(classes):
        d = os.path.join(data, "val", c)
        for f in sorted(os.listdir(d)):
            img = np.asarray(Image.open(os.path.join(d, f)).convert("RGB"))
            x = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255)
            xs.append((x - mean) / std)
            ys.append(label)
    x, y = torch.stack(xs), torch.tensor(ys)
    if train_mode_batch:
        # Batch statistics of each batch; a shuffled order mixes the classes as training did.
        model.train()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[perm], y[perm]
        size = train_mode_batch
    else:
        model.eval()
        size = 120
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), size):
            xb = x[i:i + size]
            if train_mode_batch and len(xb) < 2:
                continue
            correct += (model(xb).argmax(1) == y[i:i + size]).sum().item()
    return 100.0 * (1 - correct / len(y))


def plot(result, path):
    ensure("matplotlib", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for norm, cells in result["cells"].items():
        bs = sorted(int(b) for b in cells)
        means = [cells[str(b)]["mean"] for b in bs]
        stds = [cells[str(b)]["std"] for b in bs]
        ax.errorbar(bs, means, yerr=stds, marker="o", capsize=3, label=f"ours: {norm}")
    if "batch" in result["cells"] and "bn_train_mode" in result:
        tm = result["bn_train_mode"]
        bs = sorted(int(b) for b in tm)
        ax.plot(bs, [tm[str(b)]["mean"] for b in bs], "k:", marker="x",
                label="ours: batch, evaluated with batch statistics")
    p = PAPER
    ax.plot(p["batch"], p["batch_norm"], "--", color="gray", label="paper: BN (ResNet-50, ImageNet)")
    ax.plot(p["batch"], p["group_norm"], "-.", color="gray", label="paper: GN (ResNet-50, ImageNet)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([32, 16, 8, 4, 2])
    ax.set_xticklabels(["32", "16", "8", "4", "2"])
    ax.invert_xaxis()
    ax.set_xlabel("images per batch")
    ax.set_ylabel("top-1 validation error (%)")
    s = result["settings"]
    ax.set_title(f"MobileNetV2 x{s['width']} on digits {s['resolution']}px, "
                 f"{s['epochs']} epochs, {len(s['seeds'])} seeds (mean ± std)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--norms", default="batch,group:8,layer,instance")
    p.add_argument("--batches", default="32,8,4,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="steps instead of epochs (smoke)")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--resolution", type=int, default=48)
    p.add_argument("--base-lr", type=float, default=0.0125)
    p.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--out", default=os.path.join(ROOT, "bench-results", "norm-study.json"))
    p.add_argument("--plot", default=os.path.join(ROOT, "docs", "norm-study.png"))
    p.add_argument("--reuse", action="store_true", help="keep runs that already finished")
    p.add_argument("--smoke", action="store_true",
                   help="one cell (group:8, batch 8, one seed, 3 steps), no plot; with "
                        "--replicas, its three cells at one seed, 3 steps")
    p.add_argument("--replicas", type=int, default=0,
                   help="the data-parallel column: R torchrun processes per run, --batches per "
                        "replica (default 2); BatchNorm, BatchNorm --sync-bn and GroupNorm")
    args = p.parse_args()
    suffix = "-smoke" if args.smoke else ""
    if args.replicas:
        if args.replicas < 2:
            sys.exit("norm_study: --replicas needs at least 2")
        args.norms = f"batch,{SYNC},group:8"
        if args.batches == p.get_default("batches"):
            args.batches = "2"
        if args.out == p.get_default("out"):
            args.out = os.path.join(ROOT, "bench-results", f"norm-study-replicas{suffix}.json")
        if args.jobs == p.get_default("jobs"):
            args.jobs = 1  # each run is already R processes
    if args.smoke:
        args.seeds, args.steps = "0", 3
        if not args.replicas:
            args.norms, args.batches = "group:8", "8"
            args.out = os.path.join(ROOT, "bench-results", "norm-study-smoke.json")
    if not os.path.exists(BIN):
        sys.exit(f"norm_study: {BIN} is missing: run `make release`")
    import torch

    torch.set_num_threads(1)
    import digits_imagefolder

    data = os.path.join(ROOT, "bench-results", f"digits-{args.resolution}")
    if not os.path.exists(os.path.join(data, "val")):
        digits_imagefolder.write(data, size=args.resolution, overwrite=True)
    runs = os.path.join(ROOT, "bench-results", "norm-study-runs")
    os.makedirs(runs, exist_ok=True)
    norms = args.norms.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = [(n, b, s) for b in batches for n in norms for s in seeds]
    # Small batches take longest: start them first.
    cells.sort(key=lambda c: c[1])
    started = time.time()
    runs_out = []
    failed = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for cell, out, info in pool.map(lambda c: train(c, args, data, runs), cells):
            norm, batch, seed = cell
            if isinstance(info, str) and "the loss is" in info:
                # Diverged (a non-finite loss): chance-level error, and said so.
                print(f"{norm:>15} b{batch:<2} s{seed}: diverged: {info}", file=sys.stderr)
                runs_out.append({"norm": norm, "batch": batch, "seed": seed, "val_error": 90.0,
                                 "diverged": info, "seconds": None})
                continue
            if isinstance(info, str):
                print(f"{norm:>15} b{batch:<2} s{seed}: FAILED {info}", file=sys.stderr)
                failed.append({"norm": norm, "batch": batch, "seed": seed, "error": info})
                continue
            model_norm = "batch" if norm == SYNC else norm
            err = evaluate(model_norm, out, data, args)
            row = {"norm": norm, "batch": batch, "seed": seed, "val_error": err,
                   "seconds": info}
            if args.replicas:
                row["replicas"] = args.replicas
            if model_norm == "batch":
                # The batch the statistics were taken over in training.
                seen = batch * args.replicas if norm == SYNC else batch
                row["val_error_train_mode"] = evaluate(model_norm, out, data, args, seen)
            with open(os.path.join(out, "metrics.jsonl")) as f:
                last = [json.loads(line) for line in f if line.strip()][-1]
            row["ours_val_top1_eval_transform"] = last.get("val_top1")
            row["train_loss"] = last.get("train_loss")
            runs_out.append(row)
            extra = (f", train-mode eval {row['val_error_train_mode']:.2f}%"
                     if "val_error_train_mode" in row else "")
            print(f"{norm:>15} b{batch:<2} s{seed}: val error {err:.2f}%{extra} "
                  f"({info or 0:.0f} s)", file=sys.stderr)

    def summary(key, norm):
        out = {}
        for b in batches:
            v = [r[key] for r in runs_out if r["norm"] == norm and r["batch"] == b and key in r]
            if v:
                out[str(b)] = {"mean": statistics.fmean(v),
                               "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
        return out

    result = {
        "settings": {"arch": "mobilenet_v2", "width": args.width, "resolution": args.resolution,
                     "epochs": args.epochs, "steps": args.steps, "seeds": seeds,
                     "base_lr_at_32": args.base_lr, "group_norm_groups": 8,
                     "data": "scikit-learn digits, 1437 train / 360 val, upscaled bicubic",
                     "replicas": args.replicas or 1,
                     "batch_is": "images per replica" if args.replicas else "images per step"},
        "machine": machine(),
        "seconds": time.time() - started,
        "cells": {n: summary("val_error", n) for n in norms},
        "runs": runs_out,
        "failed": failed,
        "paper": PAPER,
    }
    if "batch" in norms:
        result["bn_train_mode"] = summary("val_error_train_mode", "batch")
    if SYNC in norms:
        result["sync_bn_train_mode"] = summary("val_error_train_mode", SYNC)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"norm_study: {len(runs_out)} runs, {len(failed)} failed, "
          f"{result['seconds']:.0f} s; wrote {args.out}", file=sys.stderr)
    print(f"{'norm':>15} " + " ".join(f"{'b' + str(b):>14}" for b in batches))
    for n in norms:
        c = result["cells"][n]
        print(f"{n:>15} " + " ".join(
            f"{c[str(b)]['mean']:7.2f} ±{c[str(b)]['std']:5.2f}" if str(b) in c else f"{'-':>14}"
            for b in batches))
    if not args.smoke and not args.replicas:
        plot(result, args.plot)
        print(f"norm_study: plot in {args.plot}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
