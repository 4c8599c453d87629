#!/usr/bin/env python3
"""Reference tensors for the normalization layers (tests/it/norm_parity.rs).

Runs torch.nn.BatchNorm1d/2d, InstanceNorm1d/2d, LayerNorm and GroupNorm (and the modules that
`NormKind::build` stands for) over a grid of shapes and options, and writes, per case: the
seeded inputs, the initial parameters and buffers (random, so that the test means something),
PyTorch's outputs in eval and train mode, the gradients w.r.t. input, weight and bias for a fixed
random upstream gradient, the running stats after three training steps, and the eval output with
those trained stats. Also one state_dict per layer (under a nested prefix) with an input and its
eval output, to load into a VarStore.

    .venv/bin/python3 tests/gen_norm.py --out fixtures/norm

Output: `<out>/cases.json` (the index: one entry per case with its layer, options and the
safetensors file holding its tensors under `<case>.<name>`), `<out>/<layer>.safetensors`, and
`<out>/state_<layer>.safetensors` + `<out>/state_<layer>_io.safetensors`. Deterministic: one
seed, one thread, CPU, float32.
"""

import argparse
import json
import os
import time

import torch
from safetensors.torch import save_file
from torch import nn

SEED = 20240603
STATE_PREFIX = "features.0.1"


def randomize(m: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial weight/bias and running stats (num_batches_tracked = 3)."""
    with torch.no_grad():
        w = getattr(m, "weight", None)
        b = getattr(m, "bias", None)
        if w is not None:
            w.copy_(1.0 + 0.5 * torch.randn(w.shape, generator=gen))
        if b is not None:
            b.copy_(0.5 * torch.randn(b.shape, generator=gen))
        rm = getattr(m, "running_mean", None)
        if rm is not None:
            rm.copy_(0.5 * torch.randn(rm.shape, generator=gen))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(rm.shape, generator=gen))
            m.num_batches_tracked.fill_(3)


def rand_input(shape, gen):
    return 2.0 * torch.randn(shape, generator=gen) + 0.5


class Writer:
    def __init__(self):
        self.files = {}  # file stem -> {key: tensor}
        self.cases = []

    def add(self, file, case, tensors):
        d = self.files.setdefault(file, {})
        for k, v in tensors.items():
            key = f"{case}.{k}"
            assert key not in d, key
            d[key] = v.detach().clone().contiguous()


def grads(m, x, gy, train):
    """Output and gradients (input, weight, bias) of one forward in the given mode."""
    m.train(train)
    xg = x.clone().requires_grad_(True)
    for p in m.parameters():
        p.grad = None
    y = m(xg)
    y.backward(gy)
    out = {"y": y, "gx": xg.grad}
    w = getattr(m, "weight", None)
    b = getattr(m, "bias", None)
    if w is not None:
        out["gw"] = w.grad
    if b is not None:
        out["gb"] = b.grad
    return out


def run_case(wr, file, case, meta, m, shape, gen, train_ok=True):
    """Records one case: eval from the initial state, a train step with gradients, two more
    train steps, the running stats, and eval with the trained stats."""
    randomize(m, gen)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    x = rand_input(shape, gen)
    x2 = rand_input(shape, gen)
    x3 = rand_input(shape, gen)
    gy = torch.randn(shape, generator=gen)
    t = {"x": x, "x2": x2, "x3": x3, "gy": gy}
    for k, v in init.items():
        t[f"init.{k}"] = v
    e = grads(m, x, gy, train=False)
    for k, v in e.items():
        t[f"eval.{k}"] = v
    if train_ok:
        tr = grads(m, x, gy, train=True)
        for k, v in tr.items():
            t[f"train.{k}"] = v
        with torch.no_grad():
            m.train()
            m(x2)
            m(x3)
            m.eval()
            t["eval_after.y"] = m(x)
        for k, v in m.state_dict().items():
            if k in ("running_mean", "running_var", "num_batches_tracked"):
                t[f"after.{k}"] = v
    meta = dict(meta, name=case, file=file, shape=list(shape), train=train_ok)
    wr.add(file, case, t)
    wr.cases.append(meta)


def batch_norm_cases(wr, gen):
    shapes1 = [(2, 4), (8, 4), (1, 3, 5), (2, 3, 5), (8, 3, 5)]
    shapes2 = []
    for n in (1, 2, 8):
        for chw in ((3, 4, 4), (4, 2, 5), (5, 1, 1)):
            shapes2.append((n,) + chw)
    for dims, shapes in ((1, shapes1), (2, shapes2)):
        for shape in shapes:
            per_channel = shape[0]
            for s in shape[2:]:
                per_channel *= s
            if per_channel == 1:
                continue  # one value per channel: an error, tested in norm_errors.rs
            for affine in (True, False):
                for track in (True, False):
                    for momentum in (0.1, None):
                        if not track and momentum is None:
                            continue  # momentum unused without running stats
                        c = shape[1]
                        eps = 1e-3 if c == 5 else 1e-5
                        cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
                        m = cls(c, eps=eps, momentum=momentum, affine=affine,
                                track_running_stats=track)
                        case = f"bn{dims}d_{'x'.join(map(str, shape))}_a{int(affine)}" \
                               f"_t{int(track)}_m{'none' if momentum is None else momentum}"
                        meta = dict(layer=f"batch_norm{dims}d", num_features=c, eps=eps,
                                    momentum=momentum, affine=affine, track_running_stats=track)
                        run_case(wr, "batch_norm", case, meta, m, shape, gen)


def instance_norm_cases(wr, gen):
    shapes = {
        1: [(3, 6), (1, 3, 6), (2, 3, 6), (8, 2, 5)],
        2: [(3, 4, 4), (1, 3, 4, 4), (2, 4, 2, 5), (8, 2, 3, 3)],
    }
    for dims in (1, 2):
        for shape in shapes[dims]:
            for affine in (True, False):
                for track in (True, False):
                    for momentum in (0.1, None):
                        if not track and momentum is None:
                            continue
                        c = shape[-dims - 1]
                        cls = nn.InstanceNorm1d if dims == 1 else nn.InstanceNorm2d
                        m = cls(c, eps=1e-5, momentum=momentum, affine=affine,
                                track_running_stats=track)
                        case = f"in{dims}d_{'x'.join(map(str, shape))}_a{int(affine)}" \
                               f"_t{int(track)}_m{'none' if momentum is None else momentum}"
                        meta = dict(layer=f"instance_norm{dims}d", num_features=c, eps=1e-5,
                                    momentum=momentum, affine=affine, track_running_stats=track)
                        run_case(wr, "instance_norm", case, meta, m, shape, gen)


def layer_norm_cases(wr, gen):
    grid = [
        ((2, 3, 4, 4), [4]),
        ((2, 3, 4, 4), [4, 4]),
        ((1, 3, 4, 4), [3, 4, 4]),
        ((8, 3, 2, 5), [3, 2, 5]),
        ((2, 5, 8), [8]),  # [N, L, D]: a sequence of D-dim tokens
        ((4, 6), [6]),
    ]
    for shape, ns in grid:
        for affine, bias in ((True, True), (True, False), (False, False)):
            eps = 1e-5 if len(ns) > 1 else 1e-3
            m = nn.LayerNorm(ns, eps=eps, elementwise_affine=affine, bias=bias)
            case = f"ln_{'x'.join(map(str, shape))}_ns{'x'.join(map(str, ns))}" \
                   f"_a{int(affine)}_b{int(bias)}"
            meta = dict(layer="layer_norm", normalized_shape=ns, eps=eps,
                        elementwise_affine=affine, bias=bias)
            run_case(wr, "layer_norm", case, meta, m, shape, gen)


def group_norm_cases(wr, gen):
    shapes = [(1, 4, 3, 3), (2, 4, 3, 3), (8, 6, 2, 3), (2, 6), (2, 4, 5), (1, 6, 1, 1)]
    for shape in shapes:
        c = shape[1]
        spatial = 1
        for s in shape[2:]:
            spatial *= s
        for g in sorted({1, 2, c}):
            if shape[0] * (c // g) * spatial == 1:
                continue  # torch's "more than 1 value per channel" error: in norm_errors.rs
            if (c // g) * spatial == 1:
                # One value per group: y = bias exactly, but the fused kernel's rounding of
                # var ~ 0 is amplified by 1/sqrt(eps); not a meaningful parity check.
                continue
            for affine in (True, False):
                eps = 1e-5 if g != 2 else 1e-3
                m = nn.GroupNorm(g, c, eps=eps, affine=affine)
                case = f"gn_{'x'.join(map(str, shape))}_g{g}_a{int(affine)}"
                meta = dict(layer="group_norm", num_groups=g, num_channels=c, eps=eps,
                            affine=affine)
                run_case(wr, "group_norm", case, meta, m, shape, gen)


def norm2d_cases(wr, gen):
    """What `NormKind::build(p, C, bn)` must equal, with bn = eps 1e-3, momentum 0.01."""
    for shape in ((2, 4, 3, 3), (8, 6, 2, 2)):
        c = shape[1]
        for kind in ("batch", "group:2", "layer", "instance"):
            if kind == "batch":
                m = nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)
            elif kind.startswith("group:"):
                m = nn.GroupNorm(int(kind.split(":")[1]), c)
            elif kind == "layer":
                m = nn.GroupNorm(1, c)
            else:
                m = nn.InstanceNorm2d(c, affine=True)
            case = f"norm2d_{'x'.join(map(str, shape))}_{kind.replace(':', '')}"
            meta = dict(layer="norm2d", kind=kind, channels=c, bn_eps=1e-3, bn_momentum=0.01)
            run_case(wr, "norm2d", case, meta, m, shape, gen)


def state_dicts(out, gen):
    """A trained module's state_dict under STATE_PREFIX, an input, and its eval output."""
    mods = {
        "batch_norm2d": (nn.BatchNorm2d(6), (4, 6, 3, 3)),
        "batch_norm1d": (nn.BatchNorm1d(5, momentum=None), (4, 5, 7)),
        "instance_norm2d": (nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
                            (2, 4, 3, 3)),
        "instance_norm1d": (nn.InstanceNorm1d(3, affine=True), (2, 3, 8)),
        "layer_norm": (nn.LayerNorm([4, 3, 3]), (2, 4, 3, 3)),
        "group_norm": (nn.GroupNorm(3, 6), (2, 6, 3, 3)),
    }
    index = {}
    for name, (m, shape) in mods.items():
        randomize(m, gen)
        m.train()
        with torch.no_grad():
            for _ in range(3):
                m(rand_input(shape, gen))
        m.eval()
        x = rand_input(shape, gen)
        with torch.no_grad():
            y = m(x)
        sd = {f"{STATE_PREFIX}.{k}": v.clone().contiguous() for k, v in m.state_dict().items()}
        save_file(sd, os.path.join(out, f"state_{name}.safetensors"))
        save_file({"x": x, "y": y.contiguous()},
                  os.path.join(out, f"state_{name}_io.safetensors"))
        index[name] = dict(prefix=STATE_PREFIX, keys=sorted(sd), shape=list(shape),
                           repr=repr(m))
    return index


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="fixtures/norm", help="output folder")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    os.makedirs(args.out, exist_ok=True)
    wr = Writer()
    batch_norm_cases(wr, gen)
    instance_norm_cases(wr, gen)
    layer_norm_cases(wr, gen)
    group_norm_cases(wr, gen)
    norm2d_cases(wr, gen)
    for file, tensors in wr.files.items():
        save_file(tensors, os.path.join(args.out, f"{file}.safetensors"))
    states = state_dicts(args.out, gen)
    index = dict(torch_version=torch.__version__, seed=SEED, dtype="float32",
                 cases=wr.cases, state_dicts=states)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    n_bytes = sum(os.path.getsize(os.path.join(args.out, p)) for p in os.listdir(args.out))
    print(f"gen_norm: {len(wr.cases)} cases, {len(states)} state dicts, "
          f"{n_bytes / 1e6:.1f} MB in {args.out} ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
