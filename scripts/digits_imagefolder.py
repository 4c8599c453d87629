#!/usr/bin/env python3
"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) as an ImageFolder of PNGs,
for `mobilenet train` and scripts/train_compare.py:

  .venv/bin/python3 scripts/digits_imagefolder.py OUT [--size 32] [--val-fraction 0.2] [--seed 0]

writes OUT/train/<digit>/<index>.png and OUT/val/<digit>/<index>.png: each image's 0..16 ink
scaled to 0..255, upscaled to SIZE x SIZE with PIL's bicubic filter, grayscale copied to RGB;
a seeded split, stratified by digit (sklearn's train_test_split). <index> is the image's
position in load_digits(), zero-padded. Prints the counts per split and class.

Installs scikit-learn into the running Python (the project's .venv) when it is missing. The data
is generated, never committed: write it under /tmp or data/ (git-ignored).
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys

SKLEARN = "scikit-learn==1.9.1"
SPLITS = ("train", "val")


def ensure_sklearn():
    if importlib.util.find_spec("sklearn"):
        return
    print(f"digits_imagefolder: installing {SKLEARN}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    SKLEARN], check=True)


def write(out, size=32, val_fraction=0.2, seed=0, overwrite=False):
    """Writes the two splits under `out`; returns {split: {digit: count}}."""
    ensure_sklearn()
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    for split in SPLITS:
        d = os.path.join(out, split)
        if os.path.exists(d):
            if not overwrite:
                sys.exit(f"digits_imagefolder: {d} exists (pass --overwrite to replace it)")
            shutil.rmtree(d)
    digits = load_digits()
    index = np.arange(len(digits.target))
    train, val = train_test_split(index, test_size=val_fraction, stratify=digits.target,
                                  random_state=seed)
    counts = {}
    for split, members in zip(SPLITS, (train, val)):
        counts[split] = {}
        for i in sorted(members):
            digit = int(digits.target[i])
            ink = np.clip(np.rint(digits.images[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            img = Image.fromarray(ink).resize((size, size), Image.BICUBIC).convert("RGB")
            d = os.path.join(out, split, str(digit))
            os.makedirs(d, exist_ok=True)
            img.save(os.path.join(d, f"{i:04d}.png"))
            counts[split][digit] = counts[split].get(digit, 0) + 1
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write train/ and val/ into")
    p.add_argument("--size", type=int, default=32, help="side of the upscaled images, in pixels")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace OUT/train and OUT/val")
    args = p.parse_args()
    if args.size < 1:
        p.error("--size must be at least 1")
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be between 0 and 1")
    counts = write(args.out, args.size, args.val_fraction, args.seed, args.overwrite)
    print(f"digits {args.size}x{args.size} RGB in {args.out} (seed {args.seed})")
    print(f"{'split':<6} {'total':>5}  " + " ".join(f"{d:>4}" for d in range(10)))
    for split, per_digit in counts.items():
        print(f"{split:<6} {sum(per_digit.values()):>5}  "
              + " ".join(f"{per_digit.get(d, 0):>4}" for d in range(10)))


if __name__ == "__main__":
    main()
