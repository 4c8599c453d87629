#!/usr/bin/env python3
"""Reference data-parallel training steps for `torchrun ... mobilenet train` (tests/it/train_dist.rs),
written by PyTorch's own DistributedDataParallel.

    .venv/bin/python3 tests/gen_dist.py --out fixtures/dist

Two local processes (torch.multiprocessing spawn) join a `torch.distributed` group with the Gloo
backend over loopback (`init_method="tcp://127.0.0.1:<free port>"`). Each wraps torchvision's
mobilenet_v2(width_mult=0.35) with BatchNorm (plain BatchNorm2d, no SyncBatchNorm) in
`DistributedDataParallel` with its defaults (`broadcast_buffers=True`: rank 0's running
statistics are broadcast before every forward, then each rank updates them from its own batch)
but `bucket_cap_mb=BUCKET_MB`, so that the reducer's buckets, rebuilt at the second step in the
order the first backward produced the gradients, are several,
and takes STEPS steps as tests/gen_train.py's `v2_batch_sgd` case does (the same data, seeded
init, SGD, CosineAnnealingLR stepped per epoch, dropout 0, one thread), on its
`DistributedSampler(shuffle=False)` shard: rank r gets images r, r + 2, r + 4, r + 6 of the
folder order, BATCH per step.

Output: `<out>/data/{a,b}/{0..3}.png` (gen_train.py's images), `<out>/v2_batch_sgd/init.pth`,
`<out>/v2_batch_sgd/rank{0,1}.safetensors` (each rank's state dict after the steps: the same
parameters, its own running statistics) and `<out>/manifest.json` with the command-line flags
each rank of ours takes and, under "buckets", the reducer's buckets after the rebuild (each a
list of parameter names, in the order they are all-reduced). Under a minute on 2 cores.
"""

import argparse
import json
import math
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_train import IMAGENET, RES, SEED, load, param_groups, seeded, write_data  # noqa: E402

WORLD = 2
BATCH = 2  # per rank
STEPS = 3
CASE = "v2_batch_sgd"
ARCH, WIDTH, NORM = "mobilenet_v2", 0.35, "batch"
FLAGS = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
BUCKET_MB = 0.25  # about 1.6 MB of parameters: several buckets


def shard(n, rank):
    """DistributedSampler(shuffle=False)'s indices for `rank` of a data set of `n` items."""
    total = math.ceil(n / WORLD) * WORLD
    idx = list(range(n))
    idx += idx[: total - n]
    return idx[rank:total:WORLD]


def worker(rank, port, data, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    model = seeded(ARCH, WIDTH, NORM, 2, SEED)
    model.load_state_dict(torch.load(os.path.join(out, CASE, "init.pth"), weights_only=True))
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model.train()
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=BUCKET_MB)
    xs, ys = load(data, *IMAGENET)
    mine = shard(len(data), rank)
    groups = param_groups(model, FLAGS["weight_decay"], None)
    opt = torch.optim.SGD(groups, lr=FLAGS["lr"], momentum=FLAGS["momentum"])
    per_epoch = math.ceil(len(mine) / BATCH)
    epochs = math.ceil(STEPS / per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    crit = nn.CrossEntropyLoss()
    step = 0
    for _epoch in range(epochs):
        for b in range(per_epoch):
            if step == STEPS:
                break
            idx = mine[b * BATCH:(b + 1) * BATCH]
            loss = crit(ddp(xs[idx]), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        sched.step()
    if rank == 0:
        names = {p.data_ptr(): n for n, p in model.named_parameters()}
        buckets = [[names[p.data_ptr()] for p in b.parameters()]
                   for b in ddp.reducer._get_zeros_like_grad_buckets()]
        with open(os.path.join(out, CASE, "buckets.json"), "w") as f:
            json.dump(buckets, f)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(out, CASE, f"rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    out = ap.parse_args().out
    data = write_data(os.path.join(out, "data"))
    os.makedirs(os.path.join(out, CASE), exist_ok=True)
    torch.save(seeded(ARCH, WIDTH, NORM, 2, SEED).state_dict(),
               os.path.join(out, CASE, "init.pth"))
    mp.spawn(worker, args=(free_port(), data, out), nprocs=WORLD, join=True)
    args = ["--arch", ARCH, "--width-mult", str(WIDTH), "--norm", NORM, "--dropout", "0",
            "--steps", str(STEPS), "--batch-size", str(BATCH), "--resolution", str(RES),
            "--augment", "none", "--no-shuffle", "--schedule", "cosine",
            "--bucket-cap-mb", str(BUCKET_MB)]
    for k, v in FLAGS.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    with open(os.path.join(out, "manifest.json"), "w") as f:
        with open(os.path.join(out, CASE, "buckets.json")) as b:
            buckets = json.load(b)
        json.dump({"world": WORLD, "steps": STEPS, "cases": {CASE: args},
                   "buckets": {CASE: buckets}}, f, indent=1)
    print(f"dist fixtures: {WORLD} DDP ranks x {STEPS} steps in {out}")


if __name__ == "__main__":
    main()
