#!/usr/bin/env python3
"""References for classify's PIL-path preprocessing (tests/it/classify_pil.rs), from the venv's
Pillow, torchvision, timm and torch:

  .venv/bin/python3 tests/gen_pil.py --out fixtures/pil

Writes into OUT:
  png/*.png, jpeg/*.jpg
                 real photos (weights/samples) at several sizes and aspect ratios: square, wide,
                 tall, panorama, smaller than the resize (upscaled), one already at the resize
                 size; JPEGs baseline 4:2:0, 4:2:2, 4:4:4, progressive, grayscale and CMYK.
  pil.safetensors
                 per image NAME (`png/x.png`): `NAME.pixels`, `Image.open(p).convert("RGB")` as
                 uint8 [H, W, 3]; `NAME.tv232`, `MobileNet_V2_Weights.IMAGENET1K_V2.transforms()`
                 of that PIL image (float [3, 224, 224]); `NAME.timm256`, timm's eval transform of
                 `mobilenetv1_100.ra4_e3600_r224_in1k` (bicubic, 256, mean = std = 0.5); and
                 `NAME.tv232.logits` / `NAME.timm256.logits`, the two seeded models' logits
                 (one image per forward).
  mobilenet_v2-seeded.pth
                 torchvision mobilenet_v2 (seed 0) with BatchNorm statistics computed on the
                 sample photos and the classifier scaled (gen_classify.py's `seeded_model`).
  mobilenet_v1-seeded.pth
                 timm mobilenetv1_100 from weights/export.py's `seeded` (seed 0).
  expected.json  per image and model (`v2`, `v1`): the Python pipeline's top-5 indices and
                 softmax probabilities.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "weights", "samples")
sys.path.insert(0, os.path.join(ROOT, "weights"))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def sample(name):
    ext = ".jpg" if name == "rocket" else ".png"
    return Image.open(os.path.join(SAMPLES, name + ext)).convert("RGB")


def write_pngs(out):
    """Photos at several sizes and aspect ratios (the resize is upsampling for the small ones)."""
    os.makedirs(out, exist_ok=True)
    lanczos = Image.Resampling.LANCZOS
    images = {
        "astronaut_512x512": sample("astronaut"),
        "chelsea_451x300": sample("chelsea"),
        "coffee_600x400": sample("coffee"),
        "rocket_640x427": sample("rocket"),
        "rocket_500x375": sample("rocket").resize((500, 375), lanczos),
        "coffee_tall_180x400": sample("coffee").crop((100, 0, 280, 400)),
        "astronaut_panorama_512x130": sample("astronaut").crop((0, 200, 512, 330)),
        "chelsea_up_150x100": sample("chelsea").resize((150, 100), lanczos),
        "rocket_up_61x97": sample("rocket").crop((300, 100, 361, 197)),
        "coffee_at_232_348x232": sample("coffee").resize((348, 232), lanczos),
        "astronaut_odd_233x231": sample("astronaut").crop((101, 57, 334, 288)),
    }
    for name, im in images.items():
        im.save(os.path.join(out, name + ".png"))


def write_jpegs(out):
    os.makedirs(out, exist_ok=True)
    save = lambda im, name, **kw: im.save(os.path.join(out, name + ".jpg"), **kw)
    with open(os.path.join(SAMPLES, "rocket.jpg"), "rb") as f, open(os.path.join(out, "rocket.jpg"), "wb") as g:
        g.write(f.read())
    save(sample("chelsea"), "chelsea_420", quality=90)
    save(sample("chelsea"), "chelsea_422", quality=90, subsampling=1)
    save(sample("chelsea"), "chelsea_444", quality=90, subsampling=0)
    save(sample("astronaut"), "astronaut_progressive", quality=85, progressive=True)
    save(sample("coffee").convert("L"), "coffee_gray", quality=90)
    save(sample("coffee").convert("CMYK"), "coffee_cmyk", quality=90)
    save(sample("rocket").resize((500, 375), Image.Resampling.LANCZOS), "rocket_500x375", quality=85)
    save(sample("chelsea").resize((150, 100), Image.Resampling.LANCZOS), "chelsea_up_150x100", quality=85)
    save(sample("coffee").crop((100, 0, 280, 400)), "coffee_tall_progressive_444", quality=80,
         progressive=True, subsampling=0)


def transforms():
    """The presets' own transforms, as a user gets them."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.models import MobileNet_V2_Weights

    tv = MobileNet_V2_Weights.IMAGENET1K_V2.transforms()
    assert tv.resize_size == [232] and tv.crop_size == [224], tv
    cfg = resolve_data_config({}, model=timm.create_model("mobilenetv1_100.ra4_e3600_r224_in1k", pretrained=False))
    timm_t = create_transform(**cfg)
    assert cfg["interpolation"] == "bicubic" and int(224 / cfg["crop_pct"]) == 256, cfg
    return {"tv232": tv, "timm256": timm_t}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import export
    from gen_classify import fixture_images, seeded_model

    write_pngs(os.path.join(args.out, "png"))
    write_jpegs(os.path.join(args.out, "jpeg"))
    presets = transforms()

    refs, inputs = {}, {}
    for sub, file, pil in fixture_images(args.out):
        name = f"{sub}/{file}"
        refs[f"{name}.pixels"] = torch.from_numpy(np.asarray(pil).copy())
        for preset, t in presets.items():
            x = t(pil).contiguous()
            refs[f"{name}.{preset}"] = x
            inputs[(name, preset)] = x
    names = sorted({n for n, _ in inputs})

    photos = ["png/astronaut_512x512.png", "png/chelsea_451x300.png", "png/coffee_600x400.png", "png/rocket_640x427.png"]
    calibration = torch.stack([inputs[(n, "tv232")] for n in photos])
    calibration = torch.cat([calibration, calibration.flip(-1), calibration.flip(-2), calibration.transpose(-1, -2)])
    models = {
        "v2": ("tv232", seeded_model(calibration), "mobilenet_v2-seeded.pth"),
        "v1": ("timm256", export.seeded("mobilenet_v1", 1.0, "batch", 1000, 0), "mobilenet_v1-seeded.pth"),
    }
    expected = {n: {} for n in names}
    for key, (preset, model, file) in models.items():
        torch.save(model.state_dict(), os.path.join(args.out, file))
        with torch.no_grad():
            # One image per forward, as the test runs them: a batch's other images change the
            # float32 rounding of PyTorch's own logits by about 1e-5 (these reach 20).
            logits = torch.cat([model(inputs[(n, preset)][None]) for n in names])
        values, indices = logits.softmax(-1).topk(5, -1)
        for i, n in enumerate(names):
            refs[f"{n}.{preset}.logits"] = logits[i].contiguous()
            expected[n][key] = {"index": indices[i].tolist(), "probability": values[i].tolist()}
    from safetensors.torch import save_file

    save_file(refs, os.path.join(args.out, "pil.safetensors"))
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"gen_pil: {len(names)} images, {len(refs)} reference tensors in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
