#!/usr/bin/env python3
"""Reference training steps for `mobilenet train` (tests/it/train_cli.rs), written by PyTorch.

    .venv/bin/python3 tests/gen_train.py --out fixtures/train

Data: `<out>/data/{a,b}/{0..3}.png`, eight seeded 64x64 RGB images in two classes, an ImageFolder
on which `--augment none` is an identity (Resize(64) and CenterCrop(64) leave 64x64 images as
they are).

Each case starts from seeded weights (`<out>/<case>/init.pth`, from weights/export.py's `seeded`:
torchvision for V2/V3, timm for V1, with non-trivial norm parameters and BatchNorm statistics)
and takes STEPS optimizer steps as torchvision's references/classification/train.py takes them,
with the data in folder order (`shuffle=False`), batches of BATCH, dropout 0, in train mode:
`PILToTensor`, `ConvertImageDtype(float)`, `Normalize(mean, std)` (ImageNet's; timm's 0.5 for
V1), `CrossEntropyLoss(label_smoothing)`, `optimizer.zero_grad(set_to_none=True)`, backward,
`optimizer.step()`; parameter groups as torchvision's `set_weight_decay` makes them (one group,
or `other` then `norm` with `--norm-weight-decay`); the optimizer as train.py builds it
(`SGD(momentum, weight_decay, nesterov)`, `AdamW(weight_decay)`, `RMSprop(momentum,
weight_decay, eps=0.0316, alpha=0.9)`) and `CosineAnnealingLR(T_max=epochs)` stepped after each
epoch (8 images in batches of 4: 2 steps per epoch, so the third step runs at epoch 2's rate).
Two cases run the forward and the loss under `torch.autocast("cpu", bfloat16 / float16)`, the
fp16 one with `torch.amp.GradScaler("cpu")`, as train.py's `--amp` does.

Output per case: `<out>/<case>/init.pth`, `<out>/<case>/expected.safetensors` (the state dict
after the steps: parameters, running statistics, `num_batches_tracked`), and
`<out>/manifest.json` with each case's command-line flags. One thread, CPU, float32; about 10 s.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights"))
from export import seeded  # noqa: E402

SEED = 20241130
RES = 64
BATCH = 4
STEPS = 3
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
INCEPTION = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])

# name -> (arch, width, norm, optimizer flags)
CASES = {
    "v2_batch_sgd": ("mobilenet_v2", 0.35, "batch",
                     dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)),
    "v2_batch_nesterov": ("mobilenet_v2", 0.35, "batch",
                          dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                               weight_decay=4e-5, norm_weight_decay=0.0, label_smoothing=0.1)),
    "v2_batch_adamw": ("mobilenet_v2", 0.35, "batch",
                       dict(optimizer="adamw", lr=1e-3, weight_decay=0.05)),
    "v2_batch_rmsprop": ("mobilenet_v2", 0.35, "batch",
                         dict(optimizer="rmsprop", lr=1e-3, momentum=0.9, weight_decay=1e-5)),
    "v1_batch_sgd": ("mobilenet_v1", 0.5, "batch",
                     dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)),
    "v3s_batch_adamw": ("mobilenet_v3_small", 0.5, "batch",
                        dict(optimizer="adamw", lr=1e-3, weight_decay=0.01)),
    "v3l_batch_sgd": ("mobilenet_v3_large", 0.5, "batch",
                      dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                           weight_decay=1e-4)),
    "v2_group8_sgd": ("mobilenet_v2", 0.35, "group:8",
                      dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4,
                           norm_weight_decay=0.0)),
    "v2_layer_rmsprop": ("mobilenet_v2", 0.35, "layer",
                         dict(optimizer="rmsprop", lr=1e-3, momentum=0.9, weight_decay=1e-5)),
    "v2_instance_adamw": ("mobilenet_v2", 0.35, "instance",
                          dict(optimizer="adamw", lr=1e-3, weight_decay=0.05)),
    "v3s_group8_sgd": ("mobilenet_v3_small", 0.5, "group:8",
                       dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)),
    # torch.autocast("cpu", bfloat16) around the forward and the loss.
    "v2_batch_sgd_bf16": ("mobilenet_v2", 0.35, "batch",
                          dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4,
                               precision="bf16")),
    # torch.autocast("cpu", float16) and torch.amp.GradScaler("cpu").
    "v3s_batch_adamw_fp16": ("mobilenet_v3_small", 0.5, "batch",
                             dict(optimizer="adamw", lr=1e-3, weight_decay=0.01,
                                  precision="fp16")),
}

NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def write_data(root):
    rng = np.random.default_rng(SEED)
    paths = []
    for label, cls in enumerate(["a", "b"]):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(4):
            # Class-dependent brightness, so that the classes differ.
            a = rng.integers(0, 160, (RES, RES, 3)) + 90 * label
            p = os.path.join(root, cls, f"{i}.png")
            Image.fromarray(a.astype(np.uint8)).save(p)
            paths.append((p, label))
    return paths


def load(paths, mean, std):
    xs = []
    for p, _ in paths:
        img = Image.open(p).convert("RGB")
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
        x = x.to(torch.float32).div(255)
        x = x.sub(torch.as_tensor(mean).view(3, 1, 1)).div(torch.as_tensor(std).view(3, 1, 1))
        xs.append(x)
    return torch.stack(xs), torch.tensor([label for _, label in paths])


def param_groups(model, weight_decay, norm_weight_decay):
    """torchvision's references/classification/utils.py `set_weight_decay`."""
    params = {"other": [], "norm": []}

    def walk(module):
        for p in module.parameters(recurse=False):
            if not p.requires_grad:
                continue
            if norm_weight_decay is not None and isinstance(module, NORMS):
                params["norm"].append(p)
            else:
                params["other"].append(p)
        for child in module.children():
            walk(child)

    walk(model)
    groups = [{"params": params["other"], "weight_decay": weight_decay}]
    if params["norm"]:
        groups.append({"params": params["norm"], "weight_decay": norm_weight_decay})
    return groups


def run(case, arch, width, norm, flags, data, out):
    model = seeded(arch, width, norm, 2, SEED)
    os.makedirs(os.path.join(out, case), exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out, case, "init.pth"))
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    if hasattr(model, "drop_rate"):
        model.drop_rate = 0.0
    mean, std = INCEPTION if arch == "mobilenet_v1" else IMAGENET
    xs, ys = load(data, mean, std)
    groups = param_groups(model, flags.get("weight_decay", 0.0), flags.get("norm_weight_decay"))
    lr = flags["lr"]
    if flags["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=flags["momentum"],
                              nesterov=flags.get("nesterov", False))
    elif flags["optimizer"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    else:
        opt = torch.optim.RMSprop(groups, lr=lr, momentum=flags["momentum"], eps=0.0316, alpha=0.9)
    per_epoch = math.ceil(len(data) / BATCH)
    epochs = math.ceil(STEPS / per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    crit = nn.CrossEntropyLoss(label_smoothing=flags.get("label_smoothing", 0.0))
    model.train()
    step = 0
    precision = flags.get("precision", "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    for _epoch in range(epochs):
        for b in range(per_epoch):
            if step == STEPS:
                break
            x, y = xs[b * BATCH:(b + 1) * BATCH], ys[b * BATCH:(b + 1) * BATCH]
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            step += 1
        sched.step()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(out, case, "expected.safetensors"))
    args = ["--arch", arch, "--width-mult", str(width), "--norm", norm, "--dropout", "0",
            "--steps", str(STEPS), "--batch-size", str(BATCH), "--resolution", str(RES),
            "--augment", "none", "--no-shuffle", "--schedule", "cosine"]
    for k, v in flags.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            args.append(flag)
        else:
            args += [flag, str(v)]
    return args


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = write_data(os.path.join(a.out, "data"))
    manifest = {"steps": STEPS, "cases": {}}
    for case, (arch, width, norm, flags) in CASES.items():
        manifest["cases"][case] = run(case, arch, width, norm, flags, data, a.out)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"train fixtures: {len(CASES)} cases in {a.out}")


if __name__ == "__main__":
    main()
