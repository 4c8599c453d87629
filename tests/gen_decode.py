#!/usr/bin/env python3
"""References for tests/it/decode_pil.rs: JPEGs and what the venv's Pillow (libjpeg-turbo) makes
of them.

  .venv/bin/python3 tests/gen_decode.py --out fixtures/decode

Writes into OUT:
  *.jpg            weights/samples/rocket.jpg as published, and JPEGs Pillow encodes from the
                   sample photos: baseline 4:2:0, 4:2:2 and 4:4:4, progressive 4:2:0 and 4:4:4,
                   optimized Huffman tables, grayscale (baseline and progressive), Adobe CMYK
                   (baseline and progressive), odd sizes (1x1, 17x9, 333x97, 241x173) and a
                   2000x1500 upscale; then derived files: each of a baseline and a progressive
                   JPEG cut at 10%, 50% and 90% of its bytes and without its last 2 bytes (the
                   end-of-image marker), junk bytes before a marker, and a corrupt scan byte.
                   (Pillow writes no 4:4:0 or YCCK JPEG, so there is none.)
  pixels.safetensors
                   `NAME.pixels`: `Image.open(p).convert("RGB")` as uint8 [H, W, 3] for every
                   file Pillow decodes; `NAME.draftWxH`: the pixels after
                   `im.draft("RGB", (W, H)); im.convert("RGB")` for the DRAFTS below.
  expected.json    per file: {"ok": true} or {"ok": false, "error": Pillow's message}, and the
                   draft sizes per file ("drafts": [[W, H], ...]).
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image, features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "weights", "samples")

# File -> the (W, H) sizes asked of `draft`: scales 1/2, 1/4 and 1/8, and 1 (no reduction).
DRAFTS = {
    "big_2000x1500.jpg": [(224, 224), (250, 187), (256, 256), (1000, 1000)],
    "rocket.jpg": [(200, 200), (80, 53)],
    "chelsea_422.jpg": [(100, 100)],
    "coffee_gray.jpg": [(75, 50)],
    "astronaut_cmyk.jpg": [(128, 128)],
    "astronaut_progressive.jpg": [(256, 256)],
}


def sample(name):
    return Image.open(os.path.join(SAMPLES, name)).convert("RGB")


def encode(out):
    """The JPEGs Pillow writes, named by what they exercise."""
    shutil.copy(os.path.join(SAMPLES, "rocket.jpg"), os.path.join(out, "rocket.jpg"))
    chelsea, coffee, astronaut = sample("chelsea.png"), sample("coffee.png"), sample("astronaut.png")
    save = lambda im, name, **kw: im.save(os.path.join(out, name), "JPEG", **kw)
    save(chelsea, "chelsea_420.jpg", quality=90)
    save(chelsea, "chelsea_422.jpg", quality=90, subsampling="4:2:2")
    save(chelsea, "chelsea_444.jpg", quality=90, subsampling="4:4:4")
    save(coffee, "coffee_optimized.jpg", quality=75, optimize=True)
    save(astronaut, "astronaut_progressive.jpg", quality=85, progressive=True)
    save(coffee, "coffee_progressive_444.jpg", quality=95, progressive=True, subsampling="4:4:4")
    save(coffee.convert("L"), "coffee_gray.jpg", quality=90)
    save(chelsea.convert("L"), "chelsea_gray_progressive.jpg", quality=80, progressive=True)
    save(astronaut.convert("CMYK"), "astronaut_cmyk.jpg", quality=90)
    save(chelsea.convert("CMYK"), "chelsea_cmyk_progressive.jpg", quality=85, progressive=True)
    save(coffee.crop((100, 100, 101, 101)), "tiny_1x1.jpg", quality=90)
    save(astronaut.resize((17, 9), Image.BILINEAR), "small_17x9.jpg", quality=90)
    save(coffee.crop((3, 5, 336, 102)), "odd_333x97.jpg", quality=80)
    save(chelsea.crop((7, 11, 248, 184)), "odd_241x173_progressive.jpg", quality=80, progressive=True)
    save(astronaut.resize((2000, 1500), Image.BICUBIC), "big_2000x1500.jpg", quality=90)


def derive(out):
    """Truncated and damaged copies of the encoded files."""
    read = lambda name: open(os.path.join(out, name), "rb").read()

    def write(name, data):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    for src, stem in (("chelsea_420.jpg", "baseline"), ("astronaut_progressive.jpg", "progressive")):
        data = read(src)
        for percent in (10, 50, 90):
            write(f"cut_{stem}_{percent}.jpg", data[: len(data) * percent // 100])
        write(f"cut_{stem}_no_eoi.jpg", data[:-2])
    # Junk between two segments (libjpeg warns of extraneous bytes; Pillow skips them), and
    # before the end-of-image marker.
    data = read("chelsea_420.jpg")
    app0_end = 2 + 2 + int.from_bytes(data[4:6], "big")
    write("junk_before_marker.jpg", data[:app0_end] + b"\x00\x13\x37" + data[app0_end:])
    write("junk_before_eoi.jpg", data[:-2] + b"\x00\x01\x02\x03" + data[-2:])
    # A byte in the middle of the scan changed: libjpeg warns and decodes on.
    data = bytearray(read("coffee_optimized.jpg"))
    middle = len(data) // 2
    data[middle] = 0x5A if data[middle] != 0x5A else 0x3C
    write("corrupt_scan.jpg", bytes(data))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    version = features.version("libjpeg_turbo")
    print(f"gen_decode: Pillow's JPEG decoder is libjpeg-turbo {version}")
    os.makedirs(args.out, exist_ok=True)
    encode(args.out)
    derive(args.out)

    refs, expected = {}, {}
    for name in sorted(f for f in os.listdir(args.out) if f.endswith(".jpg")):
        path = os.path.join(args.out, name)
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB")).copy()
        except OSError as e:
            expected[name] = {"ok": False, "error": str(e)}
            continue
        refs[f"{name}.pixels"] = torch.from_numpy(pixels)
        expected[name] = {"ok": True, "drafts": DRAFTS.get(name, [])}
        for w, h in DRAFTS.get(name, []):
            with Image.open(path) as im:
                im.draft("RGB", (w, h))
                refs[f"{name}.draft{w}x{h}"] = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    from safetensors.torch import save_file

    save_file(refs, os.path.join(args.out, "pixels.safetensors"))
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    for name, e in expected.items():
        print(f"  {name}: {'decoded' if e['ok'] else e['error']}")


if __name__ == "__main__":
    main()
