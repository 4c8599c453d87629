#!/usr/bin/env python3
"""Whole-process throughput of `mobilenet classify` against the pipeline a torchvision user
writes, on the same folder of real-size JPEGs, the same weights and the same machine, in one run.

  .venv/bin/python3 scripts/classify_compare.py [--images 512] [--weights FILE] [--smoke]
      [--bin target/release/mobilenet] [--out bench-results/classify-compare.json]

The folder: IMAGES JPEGs of 500x375 (quality 90), crops of the sample photos in weights/samples
resized with Pillow, written to bench-results/classify-jpegs/ (not committed; reused when there).

Timed, each as one process from start to exit:
  ours         `mobilenet classify --device cpu --json --timings --weights W FOLDER`
               (default: PIL-exact preprocessing), with its own per-stage times;
  ours tensor  the same with `--preprocess tensor` (the float path classify used before);
  python       a Dataset of PIL images with `weights.transforms()`
               (MobileNet_V2_Weights.IMAGENET1K_V2, the transform classify picks for these
               weights), DataLoader(batch_size=32, num_workers=<cores>), the eager model
               channels-last under no_grad, softmax and top-5.
Runs --rounds (3) interleaved rounds of the three and counts each pipeline's fastest round
(every round's rate is printed and saved too). Prints images/s for each, the ratio, our
per-stage times (of our fastest round), Pillow's own resize time per image
(timeit, one thread) next to ours, whether the pipelines agree on every top-1, and the CPU with
its flags. --smoke: 8 images, one run each, agreement only, no timing claims (for CI).
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SAMPLES = os.path.join(ROOT, "weights", "samples")
SIZE = (500, 375)


def cpu_description():
    """`lscpu`'s model name, CPU count and flags."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown", os.cpu_count(), ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda k: fields.get(k, "").strip()
    return get("Model name") or "unknown", get("CPU(s)"), get("Flags")


def make_images(folder, count):
    """`count` 500x375 JPEGs cut from the sample photos (seeded), unless already there."""
    from PIL import Image

    names = [f"img_{i:04d}.jpg" for i in range(count)]
    if all(os.path.isfile(os.path.join(folder, n)) for n in names):
        return [os.path.join(folder, n) for n in names]
    os.makedirs(folder, exist_ok=True)
    photos = [Image.open(os.path.join(SAMPLES, f)).convert("RGB")
              for f in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]
    rng = random.Random(0)
    for i, name in enumerate(names):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch)).resize(SIZE, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im.save(os.path.join(folder, name), quality=90)
    return [os.path.join(folder, n) for n in names]


def run_ours(binary, weights, folder, extra):
    cmd = [binary, "classify", "--device", "cpu", "--json", "--timings", "--weights", weights, *extra, folder]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"classify_compare: {' '.join(cmd)} failed:\n{out.stderr}")
    top1 = {}
    for line in out.stdout.splitlines():
        record = json.loads(line)
        top1[os.path.basename(record["path"])] = record["top"][0]["index"]
    timings = None
    for line in out.stderr.splitlines():
        if line.startswith("classify: timings "):
            timings = json.loads(line[len("classify: timings "):])
    return {"seconds": seconds, "top1": top1, "timings": timings}


def python_worker(args):
    """Child process: the torchvision user's pipeline; prints {file: top-1} as JSON."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    transform = MobileNet_V2_Weights.IMAGENET1K_V2.transforms()

    class Images(Dataset):
        def __init__(self, paths):
            self.paths = paths

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            return transform(Image.open(self.paths[i]).convert("RGB")), i

    paths = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder) if f.endswith(".jpg"))
    model = mobilenet_v2()
    model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    model = model.eval().to(memory_format=torch.channels_last)
    loader = DataLoader(Images(paths), batch_size=32, num_workers=args.workers)
    top1 = {}
    with torch.no_grad():
        for x, index in loader:
            probs = model(x.contiguous(memory_format=torch.channels_last)).softmax(-1)
            _, indices = probs.topk(5, -1)
            for i, top in zip(index.tolist(), indices.tolist()):
                top1[os.path.basename(paths[i])] = top[0]
    print(json.dumps(top1))


def run_python(weights, folder, workers):
    cmd = [sys.executable, os.path.abspath(__file__), "--python-worker", "--weights", weights,
           "--folder", folder, "--workers", str(workers)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"classify_compare: the Python pipeline failed:\n{out.stderr}")
    return {"seconds": seconds, "top1": json.loads(out.stdout)}


def pillow_resize_ms(path, number):
    """Pillow's `img.resize` to the preset's size (bilinear, shorter side 232), ms per call."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    size = (int(232 * w / h), 232) if w >= h else (232, int(232 * h / w))
    return min(timeit.repeat(lambda: im.resize(size, Image.Resampling.BILINEAR), number=number, repeat=5)) / number * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--weights", default=os.path.join(ROOT, "fixtures", "classify", "mobilenet_v2-seeded.pth"))
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "mobilenet"))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers")
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs of each pipeline; the fastest counts")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "bench-results", "classify-compare.json"))
    p.add_argument("--python-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.python_worker:
        return python_worker(args)

    count = 8 if args.smoke else args.images
    folder = os.path.join(ROOT, "bench-results", "classify-jpegs" + ("-smoke" if args.smoke else ""))
    paths = make_images(folder, count)
    if len(os.listdir(folder)) != count:
        sys.exit(f"classify_compare: {folder} holds other files than the {count} images; remove it")
    for f in (args.bin, args.weights):
        if not os.path.isfile(f):
            sys.exit(f"classify_compare: {f} is missing (make release; make fixtures)")
    model, cpus, flags = cpu_description()

    # Interleaved rounds, so that a slow minute of a shared host hits every pipeline alike; each
    # pipeline is reported by its fastest round (as timeit reports the best of its repeats).
    rounds = {"ours": [], "tensor": [], "python": []}
    for _ in range(1 if args.smoke else args.rounds):
        rounds["ours"].append(run_ours(args.bin, args.weights, folder, []))
        rounds["tensor"].append(run_ours(args.bin, args.weights, folder, ["--preprocess", "tensor"]))
        rounds["python"].append(run_python(args.weights, folder, args.workers))
    ours, tensor, python = (min(rounds[k], key=lambda r: r["seconds"]) for k in ("ours", "tensor", "python"))
    agree = min(sum(o["top1"].get(k) == v for k, v in py["top1"].items())
                for o in rounds["ours"] for py in rounds["python"])
    agree_tensor = min(sum(o["top1"].get(k) == v for k, v in py["top1"].items())
                       for o in rounds["tensor"] for py in rounds["python"])
    print(f"classify_compare: {count} JPEGs of {SIZE[0]}x{SIZE[1]} in {folder}, weights {args.weights}")
    print(f"top-1 agreement with the Python pipeline: ours {agree}/{count}, ours --preprocess tensor "
          f"{agree_tensor}/{count}")
    if args.smoke:
        print("smoke run: no timing claims")
        if agree != count or len(python["top1"]) != count:
            sys.exit("classify_compare: the pipelines disagree")
        return

    rate = lambda r: count / r["seconds"]
    t = ours["timings"]
    pillow_ms = pillow_resize_ms(paths[0], 50)
    rows = [
        ("ours (classify, --preprocess pil)", rate(ours)),
        ("ours (classify, --preprocess tensor)", rate(tensor)),
        (f"python (DataLoader, {args.workers} workers)", rate(python)),
    ]
    print(f"CPU: {model}, {cpus} CPUs; flags: {flags}")
    print(f"{len(rounds['ours'])} interleaved rounds; the fastest of each pipeline, then every round's images/s")
    print(f"{'pipeline':44} {'images/s':>9} {'vs python':>10}  rounds")
    for (name, r), key in zip(rows, ("ours", "tensor", "python")):
        each = " ".join(f"{rate(x):.1f}" for x in rounds[key])
        print(f"{name:44} {r:9.1f} {r / rate(python):9.2f}x  {each}")
    print(f"ours per stage (ms per image, summed over {t['workers']} workers): decode "
          f"{t['decode_ms_per_image']:.2f}, resize+crop+normalize {t['resize_ms_per_image']:.2f}; "
          f"model {t['model_ms_per_image']:.2f} ({t['batches']} batches)")
    print(f"Pillow img.resize 500x375 -> 309x232 bilinear: {pillow_ms:.2f} ms (timeit, best of 5)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    result = {
        "cpu": model, "cpus": cpus, "flags": flags, "images": count, "size": SIZE,
        "images_per_second": {name: r for name, r in rows},
        "rounds_images_per_second": {k: [rate(x) for x in v] for k, v in rounds.items()},
        "ours_timings": t, "ours_tensor_timings": tensor["timings"],
        "pillow_resize_ms": pillow_ms, "top1_agreement": agree, "top1_agreement_tensor": agree_tensor,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
