#!/usr/bin/env python3
"""References for the `mobilenet classify` tests (tests/classify_*.rs), from the venv's Pillow,
torchvision and torch:

  .venv/bin/python3 tests/gen_classify.py --out fixtures/classify [--write-labels]

Writes into OUT:
  png/*.png        the sample photos as PNG, and generated PNGs in every colour type and bit
                   depth Pillow reads (gray 1/2/4/8/16 bit, gray16 + tRNS, gray+alpha 8/16,
                   RGB 8/16, RGBA 8/16, palette with and without tRNS), odd, tall, wide and tiny
                   (1x1, 7x300) sizes, and one whose shorter side is already 232 (no resize).
  jpeg/*.jpg       weights/samples/rocket.jpg and JPEGs Pillow encodes from the samples: 4:2:0,
                   4:4:4, 4:2:2, grayscale, progressive, odd sizes.
  preprocess.safetensors
                   per image NAME: `NAME.pixels`, Pillow's `Image.open(p).convert("RGB")` as
                   uint8 [H, W, 3]; `NAME.PRESET`, the preset's transform applied to
                   `pil_to_tensor` of those pixels (torchvision's tensor path, float [3, 224, 224]);
                   `NAME.tv232.pil`, that transform on the PIL image (the PIL resize path).
                   Presets: tv232 / tv256 (torchvision ImageClassification, bilinear),
                   timm256 / timm248 (timm MobileNet V1: bicubic, mean = std = 0.5); every image
                   has tv232 and timm256, the four sample photos all four. pad221 (resize 221,
                   crop 224: CenterCrop zero-pads 1 row/column before and 2 after) for the
                   PADDED images, which pad the height, the width or both.
  mobilenet_v2-seeded.pth
                   torchvision mobilenet_v2 from weights/export.py's `seeded` (seed 0), with
                   BatchNorm statistics recomputed on the sample photos and the classifier
                   scaled by 30, so that predictions depend on the image (the raw seeded model
                   gives the same near-uniform output for every input).
  expected.json    torchvision's top-5 (indices, probabilities) with those weights and the tv232
                   transform on the PIL image (`NAME.tv232.pil`, what `classify` runs by default)
                   for every image, PNGs and JPEGs, each decoded by Pillow.
  labels.json      torchvision's `_IMAGENET_CATEGORIES`.

--write-labels also (re)writes src/imagenet_classes.txt, the labels built into the binary.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "weights", "samples")
SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket")
sys.path.insert(0, os.path.join(ROOT, "weights"))


def png_bytes(width, height, bit_depth, color_type, rows, palette=None, trns=None):
    """A PNG from raw scanlines (filter 0), for the colour types Pillow cannot write."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette is not None:
        out += chunk(b"PLTE", palette)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    raw = b"".join(b"\x00" + r for r in rows)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def pack_bits(values, bits):
    """Packs small integers MSB-first into bytes, one row."""
    out, acc, n = bytearray(), 0, 0
    for v in values:
        acc = (acc << bits) | int(v)
        n += bits
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def pattern(h, w, seed, channels=3, high=256):
    """Smooth gradients plus noise: resizing must round, antialias and crop them right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = [(x * (c + 1) * 37 / max(w, 1) + y * (3 - c) * 29 / max(h, 1)) for c in range(channels)]
    img = np.stack(base, -1) / 200.0 * high + rng.integers(0, high // 8 + 1, (h, w, channels))
    return np.clip(img, 0, high - 1).astype(np.uint16 if high > 256 else np.uint8)


def write_pngs(out):
    os.makedirs(out, exist_ok=True)
    for name in ("chelsea", "coffee", "astronaut"):
        shutil.copy(os.path.join(SAMPLES, name + ".png"), os.path.join(out, name + ".png"))
    Image.open(os.path.join(SAMPLES, "rocket.jpg")).convert("RGB").save(os.path.join(out, "rocket.png"))

    rgb = lambda h, w, s: Image.fromarray(pattern(h, w, s))
    rgb(97, 333, 1).save(os.path.join(out, "rgb_333x97.png"))
    rgb(400, 50, 2).save(os.path.join(out, "tall_50x400.png"))
    rgb(50, 400, 3).save(os.path.join(out, "wide_400x50.png"))
    rgb(1, 1, 4).save(os.path.join(out, "tiny_1x1.png"))
    rgb(300, 7, 5).save(os.path.join(out, "thin_7x300.png"))
    rgb(232, 300, 6).save(os.path.join(out, "noresize_300x232.png"))
    rgb(33, 31, 7).save(os.path.join(out, "small_31x33.png"))
    Image.fromarray(pattern(120, 90, 8, 1)[..., 0]).save(os.path.join(out, "gray.png"))
    rgba = np.concatenate([pattern(64, 80, 9), pattern(64, 80, 10, 1)], -1)
    rgba[:8, :, 3] = 0  # fully transparent rows keep their colour in convert("RGB")
    Image.fromarray(rgba, "RGBA").save(os.path.join(out, "rgba.png"))
    la = np.concatenate([pattern(70, 60, 11, 1), pattern(70, 60, 12, 1)], -1)
    Image.fromarray(la, "LA").save(os.path.join(out, "gray_alpha.png"))
    pal = rgb(75, 101, 13).quantize(colors=37)
    pal.save(os.path.join(out, "palette.png"))
    pal.save(os.path.join(out, "palette_trns.png"), transparency=3)
    Image.fromarray(pattern(50, 60, 14, 1)[..., 0]).save(os.path.join(out, "gray_trns.png"), transparency=7)

    def save(name, data):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    for bits in (1, 2, 4):
        v = pattern(40, 45, 20 + bits, 1, high=1 << bits)[..., 0]
        save(f"gray{bits}bit.png", png_bytes(45, 40, bits, 0, [pack_bits(r, bits) for r in v]))
    g16 = pattern(90, 70, 30, 1, high=1 << 16)[..., 0]
    g16[::3] //= 300  # many values below 256 (Pillow's I;16 -> RGB clamps at 255)
    rows16 = lambda a: [r.astype(">u2").tobytes() for r in a]
    save("gray16.png", png_bytes(70, 90, 16, 0, rows16(g16)))
    save("gray16_trns.png", png_bytes(70, 90, 16, 0, rows16(g16), trns=struct.pack(">H", 5)))
    la16 = pattern(50, 40, 31, 2, high=1 << 16)
    save("gray_alpha16.png", png_bytes(40, 50, 16, 4, rows16(la16.reshape(50, -1))))
    rgb16 = pattern(64, 48, 32, 3, high=1 << 16)
    save("rgb16.png", png_bytes(48, 64, 16, 2, rows16(rgb16.reshape(64, -1))))
    rgba16 = pattern(44, 52, 33, 4, high=1 << 16)
    save("rgba16.png", png_bytes(52, 44, 16, 6, rows16(rgba16.reshape(44, -1))))
    save("rgb_trns.png", png_bytes(60, 50, 8, 2, [r.tobytes() for r in pattern(50, 60, 34)],
                                   trns=struct.pack(">HHH", 1, 2, 3)))


def write_jpegs(out):
    os.makedirs(out, exist_ok=True)
    shutil.copy(os.path.join(SAMPLES, "rocket.jpg"), os.path.join(out, "rocket.jpg"))
    im = lambda n: Image.open(os.path.join(SAMPLES, n + ".png")).convert("RGB")
    im("chelsea").save(os.path.join(out, "chelsea.jpg"), quality=90)
    im("coffee").save(os.path.join(out, "coffee.jpg"), quality=90)
    im("astronaut").save(os.path.join(out, "astronaut.jpg"), quality=90)
    im("chelsea").save(os.path.join(out, "chelsea_444.jpg"), quality=90, subsampling=0)
    im("chelsea").save(os.path.join(out, "chelsea_422.jpg"), quality=90, subsampling=1)
    im("coffee").convert("L").save(os.path.join(out, "coffee_gray.jpg"), quality=90)
    im("astronaut").save(os.path.join(out, "astronaut_progressive.jpg"), quality=85, progressive=True)
    Image.fromarray(pattern(97, 333, 40)).save(os.path.join(out, "odd_333x97.jpg"), quality=75)
    im("coffee").crop((3, 5, 244, 178)).save(os.path.join(out, "coffee_241x173.jpg"), quality=80)


PRESETS = {
    "tv232": dict(resize_size=232, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "tv256": dict(resize_size=256, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "timm256": dict(resize_size=256, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "timm248": dict(resize_size=248, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    # The crop is larger than the resized image: an odd padding, so that its split matters.
    "pad221": dict(resize_size=221, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}
# The images that also get pad221: height padded (chelsea 451x300, wide), width padded (tall,
# small_31x33, whose height is cropped at a half-even offset), both (tiny).
PADDED = ("png/chelsea.png", "png/wide_400x50.png", "png/tall_50x400.png", "png/small_31x33.png",
          "png/tiny_1x1.png")


def fixture_images(out):
    """(sub, file, the image as `Image.open(p).convert("RGB")`) for each file of `out`/png and
    `out`/jpeg, sorted: the images the tests name `sub/file`."""
    for sub in ("png", "jpeg"):
        folder = os.path.join(out, sub)
        for file in sorted(os.listdir(folder)):
            yield sub, file, Image.open(os.path.join(folder, file)).convert("RGB")


def transform(preset):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    p = dict(PRESETS[preset])
    p["interpolation"] = InterpolationMode(p["interpolation"])
    return ImageClassification(crop_size=224, **p)


def check_presets():
    """Our presets are the published weights' own transforms."""
    from torchvision.models import MobileNet_V2_Weights
    import timm
    from timm.data import resolve_data_config

    for preset, w in (("tv232", MobileNet_V2_Weights.IMAGENET1K_V2), ("tv256", MobileNet_V2_Weights.IMAGENET1K_V1)):
        t = w.transforms()
        assert t.resize_size == [PRESETS[preset]["resize_size"]] and t.crop_size == [224], (preset, t)
    for preset, name in (("timm256", "mobilenetv1_100.ra4_e3600_r224_in1k"), ("timm248", "mobilenetv1_125.ra4_e3600_r224_in1k")):
        cfg = resolve_data_config({}, model=timm.create_model(name, pretrained=False))
        assert cfg["interpolation"] == "bicubic" and tuple(cfg["mean"]) == (0.5, 0.5, 0.5), cfg
        assert int(224 / cfg["crop_pct"]) == PRESETS[preset]["resize_size"], (preset, cfg)


def seeded_model(calibration):
    import export

    model = export.seeded("mobilenet_v2", 1.0, "batch", 1000, 0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(calibration)
        model.classifier[1].weight.mul_(30.0)
    return model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--write-labels", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from torchvision.models._meta import _IMAGENET_CATEGORIES
    from torchvision.transforms.functional import pil_to_tensor

    check_presets()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "labels.json"), "w") as f:
        json.dump(list(_IMAGENET_CATEGORIES), f)
    if args.write_labels:
        with open(os.path.join(ROOT, "src", "imagenet_classes.txt"), "w") as f:
            f.write("\n".join(_IMAGENET_CATEGORIES) + "\n")

    write_pngs(os.path.join(args.out, "png"))
    write_jpegs(os.path.join(args.out, "jpeg"))

    refs, inputs, pil_inputs = {}, {}, {}
    for sub, file, pil in fixture_images(args.out):
        name = f"{sub}/{file}"
        refs[f"{name}.pixels"] = torch.from_numpy(np.asarray(pil).copy())
        sample = sub == "png" and file[:-4] in SAMPLE_NAMES
        presets = ["tv232", "tv256", "timm256", "timm248"] if sample else ["tv232", "timm256"]
        if name in PADDED:
            presets.append("pad221")
        for preset in presets:
            t = transform(preset)
            x = t(pil_to_tensor(pil))
            refs[f"{name}.{preset}"] = x.contiguous()
            if preset == "tv232":
                refs[f"{name}.{preset}.pil"] = pil_inputs[name] = t(pil).contiguous()
                inputs[name] = x
    from safetensors.torch import save_file

    save_file(refs, os.path.join(args.out, "preprocess.safetensors"))

    samples = [f"png/{n}.png" for n in SAMPLE_NAMES]
    calibration = torch.stack([inputs[n] for n in samples])
    calibration = torch.cat([calibration, calibration.flip(-1), calibration.flip(-2), calibration.transpose(-1, -2)])
    model = seeded_model(calibration)
    torch.save(model.state_dict(), os.path.join(args.out, "mobilenet_v2-seeded.pth"))
    names = sorted(inputs)
    with torch.no_grad():
        probs = model(torch.stack([pil_inputs[n] for n in names])).softmax(-1)
    values, indices = probs.topk(5, -1)
    expected = {
        n: {"index": indices[i].tolist(), "probability": values[i].tolist()} for i, n in enumerate(names)
    }
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"gen_classify: {len(names)} images, {len(refs)} reference tensors in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
