#!/usr/bin/env python3
"""Reference steps of torch.optim's SGD, AdamW and RMSprop and learning rates of its schedulers
(tests/it/train_optim.rs).

    .venv/bin/python3 tests/gen_optim.py --out fixtures/optim

Optimizers: four seeded parameters in two groups (different lr and weight_decay), five steps
with seeded gradients, one parameter without a gradient at step 0 and another at step 2 (torch
skips them). Each case is one optimizer class with its options (every group names its lr and
weight_decay), run on the single-tensor path (the default for CPU tensors). After every step: the parameters, and `optimizer.state_dict()` with its tensors
replaced by `{"$tensor": key}` references.

Schedulers: two groups (lr 0.1 and 0.02) on an SGD optimizer, stepped once per "epoch" after
`optimizer.step()` as torchvision's train.py does: the groups' lr after construction and after
each of 20 steps, `scheduler.state_dict()` and `optimizer.state_dict()` at epoch 7 (to resume
from) and at the end. One case changes an lr by hand mid-way (the recursive forms carry it on).

Output: `<out>/manifest.json` and `<out>/tensors.safetensors` (`init.<i>`, `grad.<step>.<i>`,
`<case>.<step>.param.<i>`, `<case>.<step>.state.<i>.<key>`). Deterministic: one seed, one
thread, CPU, float32. A few KB, well under a second.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file
from torch.optim.optimizer import _default_to_fused_or_foreach

SEED = 20240616
STEPS = 5
SHAPES = [[4, 3], [3], [2, 2, 3], [5]]
GROUPS = [[0, 1], [2, 3]]
# (step, parameter) pairs whose .grad is None at that step.
NO_GRAD = [[0, 2], [2, 1]]
EPOCHS = 20
RESUME_EPOCH = 7

# name -> (class, per-group options); lr and weight_decay differ between the groups.
OPTIMIZERS = {
    "sgd": ("SGD", [dict(lr=0.1, weight_decay=0.0), dict(lr=0.05, weight_decay=1e-2)]),
    "sgd_momentum": (
        "SGD",
        [
            dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2),
            dict(lr=0.05, momentum=0.5, dampening=0.0, weight_decay=0.0),
        ],
    ),
    "sgd_nesterov": (
        "SGD",
        [
            dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5),
            dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.0),
        ],
    ),
    "adamw": (
        "AdamW",
        [
            dict(lr=1e-2, weight_decay=0.05),
            dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0),
        ],
    ),
    "adamw_amsgrad": (
        "AdamW",
        [
            dict(lr=1e-2, amsgrad=True, weight_decay=1e-2),
            dict(lr=5e-3, amsgrad=True, weight_decay=0.0),
        ],
    ),
    # torchvision's recipe: RMSprop(..., momentum=0.9, eps=0.0316, alpha=0.9), wd 1e-5.
    "rmsprop_torchvision": (
        "RMSprop",
        [
            dict(lr=0.064, alpha=0.9, eps=0.0316, momentum=0.9, weight_decay=1e-5),
            dict(lr=0.064, alpha=0.9, eps=0.0316, momentum=0.9, weight_decay=0.0),
        ],
    ),
    "rmsprop_centered": (
        "RMSprop",
        [
            dict(lr=1e-2, centered=True, momentum=0.5, weight_decay=1e-3),
            dict(lr=2e-3, alpha=0.9, centered=True, momentum=0.0, weight_decay=0.0),
        ],
    ),
    "rmsprop": ("RMSprop", [dict(lr=1e-2, weight_decay=0.0), dict(lr=5e-3, weight_decay=1e-2)]),
}

# name -> (main scheduler, warm-up) as torchvision's train.py builds them.
SCHEDULES = {
    "step": (("StepLR", dict(step_size=3, gamma=0.1)), None),
    "cosine": (("CosineAnnealingLR", dict(T_max=8, eta_min=1e-3)), None),
    "linear": (("LinearLR", dict(start_factor=0.5, end_factor=0.1, total_iters=6)), None),
    "warmup_cosine": (
        ("CosineAnnealingLR", dict(T_max=15, eta_min=0.0)),
        dict(start_factor=0.01, total_iters=5),
    ),
    "warmup_step": (
        ("StepLR", dict(step_size=4, gamma=0.5)),
        dict(start_factor=0.1, total_iters=3),
    ),
}
# Cases whose first group's lr is halved by hand after this epoch's step.
HAND_SET = {"cosine_by_hand": ("cosine", 5)}


class Tensors:
    def __init__(self):
        self.d = {}

    def add(self, key, t):
        assert key not in self.d, key
        self.d[key] = t.detach().clone().contiguous()
        return {"$tensor": key}


def jsonable(v, tensors, prefix):
    """A state dict as JSON: tensors become {"$tensor": key}, tuples lists, int keys strings."""
    if isinstance(v, torch.Tensor):
        return tensors.add(prefix, v)
    if isinstance(v, dict):
        return {str(k): jsonable(x, tensors, f"{prefix}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x, tensors, f"{prefix}.{i}") for i, x in enumerate(v)]
    return v


def run_optimizer(name, cls, groups, init, grads, tensors):
    params = [torch.nn.Parameter(t.clone()) for t in init]
    param_groups = [
        dict(params=[params[i] for i in ids], **opts) for ids, opts in zip(GROUPS, groups)
    ]
    # foreach=None (the default) takes the single-tensor path for CPU tensors.
    opt = getattr(torch.optim, cls)(param_groups)
    assert not _default_to_fused_or_foreach(params, False, False)[1]
    states = []
    for step in range(STEPS):
        opt.zero_grad()  # set_to_none=True
        for i, p in enumerate(params):
            if [step, i] not in NO_GRAD:
                p.grad = grads[step][i].clone()
        opt.step()
        for i, p in enumerate(params):
            tensors.add(f"{name}.{step}.param.{i}", p)
        states.append(jsonable(opt.state_dict(), tensors, f"{name}.{step}"))
    return {"class": cls, "groups": groups, "state_dicts": states}


def run_schedule(main, warmup, hand_set):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD(
        [dict(params=[params[0]], lr=0.1), dict(params=[params[1]], lr=0.02)], momentum=0.9
    )
    sched_cls, kwargs = main
    main_cls = getattr(torch.optim.lr_scheduler, sched_cls)
    if warmup is None:
        sched = main_cls(opt, **kwargs)
    else:
        # torchvision's train.py: the warm-up, then the main one, chained at the milestone.
        lin = torch.optim.lr_scheduler.LinearLR(opt, **warmup)
        sched = torch.optim.lr_scheduler.SequentialLR(
            opt, schedulers=[lin, main_cls(opt, **kwargs)], milestones=[warmup["total_iters"]]
        )
    lrs = [[g["lr"] for g in opt.param_groups]]
    out = {"main": {"class": sched_cls, **kwargs}, "warmup": warmup}
    for epoch in range(1, EPOCHS + 1):
        opt.step()  # no gradients: nothing moves, but the scheduler sees the step
        sched.step()
        if hand_set is not None and epoch == hand_set:
            opt.param_groups[0]["lr"] *= 0.5
        lrs.append([g["lr"] for g in opt.param_groups])
        if epoch == RESUME_EPOCH:
            out["resume"] = {
                "epoch": epoch,
                "scheduler": sched.state_dict(),
                "optimizer": jsonable(opt.state_dict(), None, ""),
            }
    out["hand_set_epoch"] = hand_set
    out["lrs"] = lrs
    out["state_dict"] = sched.state_dict()
    out["optimizer"] = jsonable(opt.state_dict(), None, "")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(SEED)

    tensors = Tensors()
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(STEPS)]
    for i, t in enumerate(init):
        tensors.add(f"init.{i}", t)
    for step, gs in enumerate(grads):
        for i, g in enumerate(gs):
            if [step, i] not in NO_GRAD:
                tensors.add(f"grad.{step}.{i}", g)

    optimizers = {
        name: run_optimizer(name, cls, groups, init, grads, tensors)
        for name, (cls, groups) in OPTIMIZERS.items()
    }
    schedules = {name: run_schedule(*spec, None) for name, spec in SCHEDULES.items()}
    for name, (base, epoch) in HAND_SET.items():
        schedules[name] = run_schedule(*SCHEDULES[base], epoch)

    manifest = {
        "seed": SEED,
        "steps": STEPS,
        "shapes": SHAPES,
        "groups": GROUPS,
        "no_grad": NO_GRAD,
        "epochs": EPOCHS,
        "optimizers": optimizers,
        "schedules": schedules,
    }
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors.d, os.path.join(args.out, "tensors.safetensors"))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
