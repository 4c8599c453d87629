#!/usr/bin/env python3
"""Exports MobileNet weights and PyTorch parity references from the venv's torchvision and timm.

Run with the project venv (`.venv/bin/python3 weights/export.py ...`):

  fixtures --out DIR         seeded models of every tested configuration, as .safetensors (and
                             .pth for two of them), with references (input, logits, stage
                             feature maps, train-mode buffers) and their state_dict key lists;
                             DIR/models/manifest.json lists them. `make fixtures` runs this.
  model --arch A [--width-mult F] [--norm N] [--num-classes K] [--seed S] --out FILE
                             one seeded model; FILE's extension picks .pth (zip), .pth with
                             --legacy, or .safetensors.
  reference --arch A ... --weights FILE --out REF [--resolution R] [--batch N] [--mode eval|train]
                             a parity reference for `mobilenet parity` from a weights file.
  pretrained [--out DIR] [--arch A ...]
                             downloads the published weights (needs internet): torchvision's
                             files keep their published names; timm's model.safetensors is
                             saved as <timm name>.safetensors. `make weights` runs this.

Seeded models are made meaningful for parity tests: every norm's affine parameters and running
statistics are randomized (PyTorch initializes them to ones/zeros, which would hide errors).
"""
import argparse
import copy
import json
import os
import sys
from functools import partial

import torch
from torch import nn

ARCHS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")

# The published weights, with the SHA-256 prefix torchvision puts in the file name.
PRETRAINED = {
    "mobilenet_v2": [
        ("torchvision", "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth"),
        ("torchvision", "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
    ],
    "mobilenet_v3_large": [
        ("torchvision", "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth"),
        ("torchvision", "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth"),
    ],
    "mobilenet_v3_small": [
        ("torchvision", "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"),
    ],
    "mobilenet_v1": [
        ("timm", "timm/mobilenetv1_100.ra4_e3600_r224_in1k"),
        ("timm", "timm/mobilenetv1_125.ra4_e3600_r224_in1k"),
    ],
}


def norm_layer(norm):
    """The torch.nn module for our norm choice (`batch`, `group:G`, `layer`, `instance`)."""
    if norm == "batch":
        return None
    if norm.startswith("group:"):
        return partial(nn.GroupNorm, int(norm.split(":", 1)[1]))
    if norm == "layer":
        return partial(nn.GroupNorm, 1)
    if norm == "instance":
        return partial(nn.InstanceNorm2d, affine=True)
    raise SystemExit(f"unknown norm {norm!r}")


def build(arch, width_mult=1.0, norm="batch", num_classes=1000, **v3):
    """The reference model: torchvision for V2/V3, timm for V1. `v3`: reduced_tail, dilated."""
    import torchvision

    layer = norm_layer(norm)
    if arch == "mobilenet_v2":
        kwargs = {} if layer is None else {"norm_layer": layer}
        return torchvision.models.mobilenet_v2(
            weights=None, width_mult=width_mult, num_classes=num_classes, **kwargs
        )
    if arch in ("mobilenet_v3_large", "mobilenet_v3_small"):
        kwargs = {} if layer is None else {"norm_layer": layer}
        ctor = getattr(torchvision.models, arch)
        return ctor(weights=None, width_mult=width_mult, num_classes=num_classes, **kwargs, **v3)
    if arch == "mobilenet_v1":
        if layer is not None:
            raise SystemExit("mobilenet_v1 references exist for BatchNorm only (timm)")
        from timm.models.efficientnet import _gen_mobilenet_v1

        name = {1.0: "mobilenetv1_100", 1.25: "mobilenetv1_125"}.get(width_mult, "mobilenetv1")
        return _gen_mobilenet_v1(name, width_mult, pretrained=False, num_classes=num_classes)
    raise SystemExit(f"unknown arch {arch!r}; one of {', '.join(ARCHS)}")


def randomize_norms(model, gen):
    """Non-trivial affine parameters in every norm layer, and BatchNorm running statistics
    measured on random images (then perturbed), so that activations stay in range through the
    whole network: different inputs give clearly different logits, and eval (running stats)
    differs from train (batch stats)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 96, 96, generator=gen))
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            std = m.running_var.sqrt()
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.1 * std)
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=gen) * 0.6 + 0.7)
    model.eval()


def seeded(arch, width_mult, norm, num_classes, seed, **v3):
    torch.manual_seed(seed)
    model = build(arch, width_mult, norm, num_classes, **v3)
    randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def stage_modules(arch, model):
    """(name, module) whose outputs are the stage feature maps, named as the Rust model names
    them (torchvision: `features.{i}`; timm: `bn1`, `blocks.{i}`)."""
    if arch == "mobilenet_v1":
        return [("bn1", model.bn1)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    return [(f"features.{i}", f) for i, f in enumerate(model.features)]


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def reduced_precision_logits(model, x, precisions, device):
    """PyTorch's own logits in each reduced precision on `device` (as float32 on the CPU), saved
    as `logits.<precision>`: the like-for-like target for a reduced-precision parity run."""
    out = {}
    for p in precisions:
        m = copy.deepcopy(model).eval().to(device=device, dtype=DTYPES[p])
        with torch.no_grad():
            out[f"logits.{p}"] = m(x.to(device=device, dtype=DTYPES[p])).float().cpu()
    return out


def reference(arch, model, resolution, batch, mode, seed):
    """Input, logits, stage feature maps and (train mode) the buffers after the forward.

    Train mode: norms use batch statistics and update running stats; dropout stays off because
    PyTorch's and libtorch-through-Rust's random streams differ.
    """
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen)
    feats = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: feats.__setitem__(name, out.clone()))
        for name, m in stage_modules(arch, model)
    ]
    model.train(mode == "train")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    model.eval()
    out = {"input": x, "logits": logits}
    out.update({f"feature.{k}": v for k, v in feats.items()})
    if mode == "train":
        for k, v in model.state_dict().items():
            if "running_" in k or "num_batches_tracked" in k:
                out[f"state.{k}"] = v.clone()
    return {k: v.contiguous() for k, v in out.items()}


def save_weights(model, path, legacy=False):
    sd = model.state_dict()
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)


def save_reference(ref, path, meta):
    from safetensors.torch import save_file

    save_file(ref, path, metadata={k: str(v) for k, v in meta.items()})


# Every configuration the Rust parity tests run:
# (name, arch, width, norm, [(resolution, mode), ...][, V3 options]).
FIXTURES = [
    ("v2_100", "mobilenet_v2", 1.0, "batch", [(224, "eval"), (224, "train"), (160, "eval")]),
    ("v2_050", "mobilenet_v2", 0.5, "batch", [(160, "eval"), (160, "train")]),
    ("v2_140", "mobilenet_v2", 1.4, "batch", [(224, "eval")]),
    ("v2_group8", "mobilenet_v2", 1.0, "group:8", [(160, "eval"), (160, "train")]),
    ("v2_layer", "mobilenet_v2", 1.0, "layer", [(160, "eval"), (160, "train")]),
    ("v2_instance", "mobilenet_v2", 1.0, "instance", [(160, "eval"), (160, "train")]),
    ("v1_100", "mobilenet_v1", 1.0, "batch", [(224, "eval"), (224, "train"), (160, "eval")]),
    ("v1_125", "mobilenet_v1", 1.25, "batch", [(224, "eval"), (160, "train")]),
    ("v3l_100", "mobilenet_v3_large", 1.0, "batch", [(224, "eval"), (224, "train"), (160, "eval")]),
    ("v3l_075", "mobilenet_v3_large", 0.75, "batch", [(160, "eval"), (160, "train")]),
    ("v3l_tail", "mobilenet_v3_large", 1.0, "batch", [(224, "eval")],
     {"reduced_tail": True, "dilated": True}),
    ("v3s_100", "mobilenet_v3_small", 1.0, "batch", [(224, "eval"), (224, "train"), (160, "eval")]),
    ("v3s_075", "mobilenet_v3_small", 0.75, "batch", [(160, "eval"), (160, "train")]),
    ("v3s_group8", "mobilenet_v3_small", 1.0, "group:8", [(160, "eval"), (160, "train")]),
]
# Configurations also saved as torch.save .pth (zip), to test the direct path.
PTH_TOO = {"v2_100", "v1_100", "v3l_100"}


def cmd_fixtures(args):
    out = os.path.join(args.out, "models")
    os.makedirs(out, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    manifest = []
    for seed, (name, arch, width, norm, refs, *rest) in enumerate(FIXTURES):
        if only and name not in only:
            continue
        v3 = rest[0] if rest else {}
        model = seeded(arch, width, norm, 1000, 1000 + seed, **v3)
        weights = os.path.join(out, f"{name}.safetensors")
        save_weights(model, weights)
        entry = {
            "name": name,
            "arch": arch,
            "width_mult": width,
            "norm": norm,
            "num_classes": 1000,
            "reduced_tail": v3.get("reduced_tail", False),
            "dilated": v3.get("dilated", False),
            "weights": os.path.relpath(weights, args.out),
            "parameters": sum(p.numel() for p in model.parameters()),
            "keys": [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                     for k, v in model.state_dict().items()],
            "references": [],
        }
        if name in PTH_TOO:
            pth = os.path.join(out, f"{name}.pth")
            save_weights(model, pth)
            entry["pth"] = os.path.relpath(pth, args.out)
        for res, mode in refs:
            # Each reference starts from the saved weights: train mode changes the buffers.
            model = seeded(arch, width, norm, 1000, 1000 + seed, **v3)
            ref = reference(arch, model, res, 2, mode, seed)
            if mode == "eval" and res == refs[0][0]:
                # PyTorch's own bf16 logits on the CPU, for the like-for-like bf16 parity test.
                ref.update(reduced_precision_logits(model, ref["input"], ["bf16"], "cpu"))
            path = os.path.join(out, f"{name}_{mode}_{res}.safetensors")
            save_reference(ref, path, {"arch": arch, "mode": mode, "resolution": res})
            entry["references"].append(
                {"path": os.path.relpath(path, args.out), "mode": mode, "resolution": res}
            )
        manifest.append(entry)
        print(f"fixtures: {name} ({arch} width {width} norm {norm})", file=sys.stderr)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def cmd_model(args):
    model = seeded(args.arch, args.width_mult, args.norm, args.num_classes, args.seed)
    save_weights(model, args.out, legacy=args.legacy)
    print(f"wrote {args.out}", file=sys.stderr)


def load_any(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def cmd_reference(args):
    model = build(args.arch, args.width_mult, args.norm, args.num_classes)
    model.load_state_dict(load_any(args.weights))
    ref = reference(args.arch, model, args.resolution, args.batch, args.mode, args.seed)
    if args.precisions and args.mode == "eval":
        ref.update(reduced_precision_logits(model, ref["input"], args.precisions.split(","),
                                            args.device))
    save_reference(ref, args.out, {"arch": args.arch, "mode": args.mode,
                                   "resolution": args.resolution})
    print(f"wrote {args.out}", file=sys.stderr)


def cmd_pretrained(args):
    os.makedirs(args.out, exist_ok=True)
    archs = args.arch or list(PRETRAINED)
    failed = []
    for arch in archs:
        for source, where in PRETRAINED[arch]:
            try:
                if source == "torchvision":
                    name = where.rsplit("/", 1)[1]
                    dest = os.path.join(args.out, name)
                    if not os.path.exists(dest):
                        # torchvision's file names carry the first 8 hex digits of the file's
                        # SHA-256; the download is checked against them.
                        prefix = name.rsplit("-", 1)[1].split(".")[0]
                        torch.hub.download_url_to_file(where, dest, hash_prefix=prefix,
                                                       progress=False)
                else:
                    from huggingface_hub import hf_hub_download

                    name = where.split("/", 1)[1] + ".safetensors"
                    dest = os.path.join(args.out, name)
                    if not os.path.exists(dest):
                        got = hf_hub_download(where, "model.safetensors")
                        with open(got, "rb") as src, open(dest, "wb") as dst:
                            dst.write(src.read())
                print(f"pretrained: {dest}", file=sys.stderr)
            except Exception as e:  # no network: say which file and why
                failed.append(where)
                print(f"pretrained: could not download {where}: {e}", file=sys.stderr)
    if failed:
        sys.exit(f"pretrained: {len(failed)} download(s) failed (this machine may have no "
                 "internet access)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fixtures")
    f.add_argument("--out", required=True)
    f.add_argument("--only", help="comma-separated fixture names")
    f.set_defaults(run=cmd_fixtures)

    def model_args(q):
        q.add_argument("--arch", required=True, choices=ARCHS)
        q.add_argument("--width-mult", type=float, default=1.0)
        q.add_argument("--norm", default="batch")
        q.add_argument("--num-classes", type=int, default=1000)
        q.add_argument("--seed", type=int, default=0)

    m = sub.add_parser("model")
    model_args(m)
    m.add_argument("--legacy", action="store_true", help="torch.save's pre-1.6 format")
    m.add_argument("--out", required=True)
    m.set_defaults(run=cmd_model)

    r = sub.add_parser("reference")
    model_args(r)
    r.add_argument("--weights", required=True)
    r.add_argument("--resolution", type=int, default=224)
    r.add_argument("--batch", type=int, default=2)
    r.add_argument("--mode", choices=("eval", "train"), default="eval")
    r.add_argument("--precisions", default="",
                   help="also PyTorch's logits in these precisions (fp16,bf16), eval mode only")
    r.add_argument("--device", default="cpu", help="device for --precisions (cpu, cuda)")
    r.add_argument("--out", required=True)
    r.set_defaults(run=cmd_reference)

    t = sub.add_parser("pretrained")
    t.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    t.add_argument("--arch", action="append", choices=list(PRETRAINED))
    t.set_defaults(run=cmd_pretrained)

    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    args.run(args)


if __name__ == "__main__":
    main()
