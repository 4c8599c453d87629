#!/usr/bin/env python3
"""Training speed against PyTorch eager: `mobilenet train` and a PyTorch loop on the same model,
batch, resolution, threads and data, data loading included on both sides.

  .venv/bin/python3 scripts/train_compare.py [--arch mobilenet_v2] [--width-mult 1.0]
      [--batch-size 32] [--resolution 64] [--steps 30] [--threads 2] [--workers 2]
      [--data DIR] [--only torch|ours] [--smoke] [--out bench-results/train-compare-ARCH.json]

Data: DIR/train and DIR/val as ImageFolders; without --data, scikit-learn's digits at the
resolution (scripts/digits_imagefolder.py) in a temporary folder, removed afterwards.

Both sides run as child processes, timed whole, with OMP_NUM_THREADS=MKL_NUM_THREADS=T and the
rest of this environment. On a loaded machine OpenMP's spin-waiting can slow PyTorch's loop
several-fold (its loader processes and other programs compete with the spinning threads);
OMP_WAIT_POLICY=PASSIVE in the environment applies to both sides, and the table names it.

PyTorch side: torchvision's ClassificationPresetTrain (RandomResizedCrop(R, antialias=True),
RandomHorizontalFlip, PILToTensor, ConvertImageDtype(float), Normalize(ImageNet mean/std)) on an
ImageFolder, DataLoader(batch_size=B, shuffle=True, num_workers=W, drop_last=True), torchvision's
model with num_classes = the data's class count, SGD(lr 0.01, momentum 0.9, weight decay 4e-5),
CrossEntropyLoss, torch.set_num_threads(T), N steps; then, as `mobilenet train` does, one pass
over DIR/val (resize to floor(R / 0.875), center-crop R) and torch.save of the model and a
checkpoint. Its loop rate counts the steps after the first 2 (warm-up).

Our side: `mobilenet train ... --steps N --json` with the same settings (and `--threads T`,
`--seed S` and `--log-every 1` when the command has them). Its loop rate comes from the JSON
lines it prints: per-step lines with `step` and `elapsed` (seconds since the loop began) give
the rate after 2 warm-up steps as for PyTorch; otherwise the final line's `images_per_s` (the
training loop's, data loading included), else its `steps` / `seconds`.

Prints a table (steps/s, images/s, ours/PyTorch; higher is faster for us) for the training loop
and for the whole process, with the CPU model and its AVX flags, and writes it all as JSON.
`--smoke` runs 3 steps each at batch 8 and resolution 32 unless given, for CI.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

WARMUP = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def cpu_info():
    """(model name, the avx flags it has)."""
    name, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = sorted(f for f in value.split() if f.startswith("avx"))
                    break
    except OSError:
        pass
    return name, flags


def rate_after_warmup(times, steps_done):
    """Steps per second between the end of step WARMUP and the end of the last step, from
    `times[i]`: the elapsed time at the end of step `steps_done[i]`."""
    if len(times) < 2 or steps_done[-1] <= WARMUP or WARMUP not in steps_done:
        return None
    t0 = times[steps_done.index(WARMUP)]
    return (steps_done[-1] - WARMUP) / (times[-1] - t0) if times[-1] > t0 else None


def validate(model, criterion, args):
    """(loss, top-1) on DIR/val with torchvision's eval transform for R: resize the shorter side
    to floor(R / 0.875), center-crop R."""
    import torch
    import torchvision
    from torchvision import transforms as T

    transform = T.Compose([
        T.Resize(int(args.resolution / 0.875), antialias=True),
        T.CenterCrop(args.resolution),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    data = torchvision.datasets.ImageFolder(os.path.join(args.data, "val"), transform=transform)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size,
                                         num_workers=args.workers)
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += criterion(logits, y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
    return loss / len(data), correct / len(data)


def torch_worker(args):
    """Child process: the PyTorch training loop; prints one JSON line."""
    import torch
    import torchvision
    from torchvision import transforms as T

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transform = T.Compose([
        T.RandomResizedCrop(args.resolution, antialias=True),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    data = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), transform=transform)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True)
    if len(loader) == 0:
        sys.exit(f"train_compare: {len(data)} images make no batch of {args.batch_size}")
    model = getattr(torchvision.models, args.arch)(width_mult=args.width_mult,
                                                   num_classes=len(data.classes)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    criterion = torch.nn.CrossEntropyLoss()
    times, losses = [], []
    start = time.perf_counter()
    while len(times) < args.steps:
        for x, y in loader:  # a new epoch restarts the workers, as torchvision's reference does
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            times.append(time.perf_counter() - start)
            if len(times) == args.steps:
                break
    steps = list(range(1, len(times) + 1))
    # What `mobilenet train` also does before it exits: validate, then save the model and a
    # checkpoint, so that the whole-process times compare like with like.
    start = time.perf_counter()
    val_loss, val_top1 = validate(model, criterion, args)
    os.makedirs(args.out_dir, exist_ok=True)
    save = os.path.join(args.out_dir, "{}.pth")
    torch.save(model.state_dict(), save.format("model"))
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": len(times)}, save.format("checkpoint"))
    print(json.dumps({"steps": len(times), "seconds": times[-1], "step_seconds": times,
                      "val_and_save_seconds": time.perf_counter() - start,
                      "val_loss": val_loss, "val_top1": val_top1,
                      "steps_per_s_after_warmup": rate_after_warmup(times, steps),
                      "first_loss": losses[0], "last_loss": losses[-1],
                      "torch": torch.__version__, "torchvision": torchvision.__version__}))


def threads_env(args):
    """The environment of both sides: libtorch's OpenMP and MKL pools at T threads from the start."""
    n = str(args.threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def run_torch(args, out_dir):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--arch", args.arch,
           "--width-mult", str(args.width_mult), "--batch-size", str(args.batch_size),
           "--resolution", str(args.resolution), "--steps", str(args.steps),
           "--threads", str(args.threads), "--workers", str(args.workers), "--data", args.data,
           "--seed", str(args.seed), "--out-dir", out_dir]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=threads_env(args))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"train_compare: the PyTorch loop failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"pytorch: {out['steps']} steps, loss {out['first_loss']:.3f} -> {out['last_loss']:.3f}, "
          f"val top-1 {out['val_top1']:.3f}; loop {out['seconds']:.2f} s, validation and saving "
          f"{out['val_and_save_seconds']:.2f} s, process {wall:.2f} s", file=sys.stderr)
    return {"loop_steps_per_s": out["steps_per_s_after_warmup"],
            "loop_measure": f"loop, after {WARMUP} warm-up steps",
            "process_seconds": wall, "process_steps_per_s": out["steps"] / wall, "raw": out}


def json_lines(text):
    """The JSON objects among `text`'s lines (others are skipped)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def number(row, *keys):
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def our_loop_rate(rows, batch_size):
    """(steps/s of the training loop, how it was measured) from `mobilenet train --json` lines."""
    per_step = [(int(r["step"]), number(r, "elapsed", "elapsed_s"))
                for r in rows if isinstance(r.get("step"), int)]
    per_step = [(s, t) for s, t in per_step if t is not None]
    if len(per_step) >= 2:
        rate = rate_after_warmup([t for _, t in per_step], [s for s, _ in per_step])
        if rate:
            return rate, f"loop, after {WARMUP} warm-up steps (per-step JSON lines)"
    final = next((r for r in reversed(rows) if "steps" in r), rows[-1] if rows else {})
    ips = number(final, "images_per_s")
    if ips:
        return ips / batch_size, "loop incl. warm-up (final JSON: images_per_s)"
    steps, seconds = number(final, "steps"), number(final, "seconds")
    if steps and seconds:
        return steps / seconds, "run incl. warm-up (final JSON: steps / seconds)"
    return None, "not found in its JSON"


def run_ours(args, out_dir):
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"train_compare: {args.binary} missing: build it with `cargo build --release`")
    help_text = subprocess.run([args.binary, "train", "--help"], capture_output=True, text=True)
    if help_text.returncode != 0:
        sys.exit(f"train_compare: `{args.binary} train --help` failed: this build has no train "
                 f"command (use --only torch):\n{help_text.stderr.strip()}")
    cmd = [args.binary, "train", "--arch", args.arch, "--width-mult", str(args.width_mult),
           "--data", os.path.join(args.data, "train"), "--val", os.path.join(args.data, "val"),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--resolution", str(args.resolution), "--optimizer", "sgd", "--lr", "0.01",
           "--momentum", "0.9", "--weight-decay", "4e-5", "--workers", str(args.workers),
           "--out", out_dir, "--json"]
    # Passed only when the command has them: --threads is not among issue #16's flags.
    for flag, value in (("--threads", args.threads), ("--seed", args.seed), ("--log-every", 1)):
        if flag in help_text.stdout:
            cmd += [flag, str(value)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=threads_env(args))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"train_compare: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    rows = json_lines(proc.stdout)
    rate, measure = our_loop_rate(rows, args.batch_size)
    final = rows[-1] if rows else {}
    print(f"ours: {len(rows)} JSON lines on stdout; the last: {json.dumps(final)[:400]}",
          file=sys.stderr)
    print(f"ours: loop rate {'%.3f steps/s' % rate if rate else 'unknown'} ({measure}), "
          f"process {wall:.2f} s", file=sys.stderr)
    return {"loop_steps_per_s": rate, "loop_measure": measure, "process_seconds": wall,
            "process_steps_per_s": args.steps / wall, "command": cmd, "json_lines": rows}


def show(value, spec, unit=""):
    return format(value, spec) + unit if value else "-"


def table(args, sides):
    name, flags = cpu_info()
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"\n{args.arch} width {args.width_mult}: batch {args.batch_size}, resolution "
          f"{args.resolution}, {args.threads} threads, {args.workers} loader workers, "
          f"{args.steps} steps, fp32 CPU, OMP_WAIT_POLICY {wait}")
    has = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx", "avx2", "avx512f"))
    print(f"CPU: {name} ({os.cpu_count()} cores); {has}; avx flags: {' '.join(flags) or 'none'}")
    print(f"{'side':<18} {'measure':<52} {'steps/s':>8} {'images/s':>9} {'ours/pytorch':>13}")
    rows = []
    for kind in ("loop", "process"):
        base = sides.get("pytorch", {}).get(f"{kind}_steps_per_s")
        for side, r in sides.items():
            rate = r[f"{kind}_steps_per_s"]
            measure = (r["loop_measure"] if kind == "loop"
                       else f"whole process ({r['process_seconds']:.2f} s)")
            ratio = rate / base if rate and base and side == "ours" else None
            rows.append({"side": side, "measure": measure, "steps_per_s": rate,
                         "images_per_s": rate * args.batch_size if rate else None,
                         "ours_over_pytorch": ratio})
            print(f"{side:<18} {measure:<52} {show(rate, '.3f'):>8} "
                  f"{show(rate and rate * args.batch_size, '.1f'):>9} "
                  f"{show(ratio, '.2f', 'x'):>13}")
    return {"cpu": name, "avx_flags": flags, "cores": os.cpu_count(), "omp_wait_policy": wait,
            "rows": rows}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mobilenet_v2", choices=ARCHS)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, help="[default: 32; 8 with --smoke]")
    p.add_argument("--resolution", type=int, help="[default: 64; 32 with --smoke]")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="folder with train/ and val/ ImageFolders [default: digits at R]")
    p.add_argument("--only", choices=("torch", "ours"), help="run one side only")
    p.add_argument("--smoke", action="store_true", help=f"{WARMUP + 1} steps each, small (CI)")
    p.add_argument("--binary", default=os.path.join(ROOT, "target/release/mobilenet"))
    p.add_argument("--out", help="JSON results [default: bench-results/train-compare-ARCH.json]")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.steps = WARMUP + 1
    if args.batch_size is None:
        args.batch_size = 8 if args.smoke else 32
    if args.resolution is None:
        args.resolution = 32 if args.smoke else 64
    if args.steps <= WARMUP:
        p.error(f"--steps must be more than the {WARMUP} warm-up steps")
    if args.torch_worker:
        return torch_worker(args)

    tmp = tempfile.mkdtemp(prefix="train-compare-")
    try:
        if args.data is None:
            from digits_imagefolder import write

            args.data = os.path.join(tmp, "digits")
            counts = write(args.data, size=args.resolution)
            print(f"data: digits {args.resolution}x{args.resolution}, "
                  + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()), file=sys.stderr)
        sides = {}
        if args.only != "ours":
            sides["pytorch"] = run_torch(args, os.path.join(tmp, "torch-out"))
        if args.only != "torch":
            sides["ours"] = run_ours(args, os.path.join(tmp, "ours-out"))
        summary = table(args, sides)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = args.out or os.path.join(ROOT, "bench-results", f"train-compare-{args.arch}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    settings = {k: getattr(args, k) for k in ("arch", "width_mult", "batch_size", "resolution",
                                              "steps", "threads", "workers", "seed")}
    with open(out, "w") as f:
        json.dump({**settings, **summary, "sides": sides}, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
