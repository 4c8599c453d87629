#!/usr/bin/env python3
"""Trained models for the bf16 decision tests (tests/it/trained.rs): torchvision's MobileNetV2
x0.5 and MobileNetV3 Small, trained from scratch in PyTorch on scikit-learn's handwritten digits
(real data, 1,437 training and 360 validation images, upscaled to 48x48 RGB by
scripts/digits_imagefolder.py), so that their logits carry real margins, unlike the seeded
fixtures' near-ties:

  .venv/bin/python3 tests/gen_trained.py --out fixtures/trained

Writes into OUT:
  NAME.pth            the trained state_dict (BatchNorm running statistics included);
  val.safetensors     `input` [360, 3, 48, 48] fp32, the validation digits as `ToTensor` then
                      ImageNet's mean/std; `label` [360] int64; `logits.NAME` [360, 10],
                      PyTorch's eval-mode fp32 logits;
  manifest.json       `version`, and under `models` per model: arch, width_mult, num_classes,
                      epochs, training seconds and PyTorch's validation accuracy.

Installs scikit-learn into the venv when missing (scripts/digits_imagefolder.py); the digits go
to a temporary folder. Seeded, so a rerun on the same torch and CPU gives the same weights. About
two minutes on 2 cores; skipped when OUT already holds this version's files (--force retrains).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import digits_imagefolder  # noqa: E402

VERSION = 1  # bump when the data, the models or the training change
SIZE = 48
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
MODELS = {
    # name: (torchvision builder, width_mult, epochs)
    "v2_050": ("mobilenet_v2", 0.5, 10),
    "v3s_100": ("mobilenet_v3_small", 1.0, 10),
}


def load_split(root, split):
    images, labels = [], []
    for digit in range(10):
        d = os.path.join(root, split, str(digit))
        for name in sorted(os.listdir(d)):
            img = np.asarray(Image.open(os.path.join(d, name)).convert("RGB"), dtype=np.float32)
            images.append(torch.from_numpy(img).permute(2, 0, 1) / 255.0)
            labels.append(digit)
    x = (torch.stack(images) - MEAN) / STD
    return x.contiguous(), torch.tensor(labels, dtype=torch.int64)


def build(arch, width):
    if arch == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(width_mult=width, num_classes=10)
    return torchvision.models.mobilenet_v3_small(width_mult=width, num_classes=10)


def train(name, arch, width, epochs, x, y, seed=0):
    torch.manual_seed(seed)
    model = build(arch, width)
    steps_per_epoch = (len(y) + 31) // 32
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, epochs=epochs,
                                                steps_per_epoch=steps_per_epoch)
    g = torch.Generator().manual_seed(seed + 1)
    start = time.time()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 32):
            idx = order[i:i + 32]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    # torchvision's V3 BatchNorm has momentum 0.01: after a few hundred steps its running
    # statistics still lag the trained weights. Recompute them over the training set (the
    # cumulative average, momentum None), as after any short training.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        for i in range(0, len(y), 64):
            model(x[i:i + 64])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval(), time.time() - start


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="retrain even if OUT is up to date")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, "manifest.json")
    if not args.force and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
        files = [m["weights"] for m in old.get("models", {}).values()] + ["val.safetensors"]
        if old.get("version") == VERSION and all(
                os.path.exists(os.path.join(args.out, n)) for n in files):
            print(f"gen_trained: {args.out} is up to date (--force retrains)")
            return
    with tempfile.TemporaryDirectory() as tmp:
        digits_imagefolder.write(tmp, size=SIZE)
        xt, yt = load_split(tmp, "train")
        xv, yv = load_split(tmp, "val")
    tensors = {"input": xv, "label": yv}
    manifest = {}
    for name, (arch, width, epochs) in MODELS.items():
        model, seconds = train(name, arch, width, epochs, xt, yt)
        with torch.no_grad():
            logits = model(xv)
        accuracy = (logits.argmax(1) == yv).float().mean().item()
        torch.save(model.state_dict(), os.path.join(args.out, f"{name}.pth"))
        tensors[f"logits.{name}"] = logits.contiguous()
        manifest[name] = {"arch": arch, "width_mult": width, "num_classes": 10,
                          "epochs": epochs, "train_seconds": round(seconds, 1),
                          "val_accuracy": accuracy, "weights": f"{name}.pth"}
        print(f"gen_trained: {name} {epochs} epochs in {seconds:.0f} s, "
              f"validation accuracy {accuracy:.4f}")
    save_file(tensors, os.path.join(args.out, "val.safetensors"))
    with open(manifest_path, "w") as f:
        json.dump({"version": VERSION, "models": manifest}, f, indent=1)


if __name__ == "__main__":
    main()
