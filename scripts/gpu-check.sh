#!/usr/bin/env bash
# On a GPU machine (torch installed, no Rust): parity on cuda in fp32, fp16 and bf16, data-parallel
# training under torchrun (NCCL) against a plain run, then our bench beside PyTorch eager (fp16,
# channels-last, cuDNN benchmark) on the same GPU, in one run.
# Prepare with scripts/gpu-prepare.sh; run from the repository root as
#   export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
#   bash .gpu/gpu-check.sh
# `DEVICE=cpu bash .gpu/gpu-check.sh` is a dry run of the same steps on the CPU (fp32 and bf16,
# small batches, few iterations), to check the script before spending GPU time on it.
set -uo pipefail
G=.gpu
BIN=$G/mobilenet
OUT=${OUT:-$G/out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  REF_PRECISIONS=fp16,bf16 PARITY="fp32 fp16 bf16" BENCH="fp32 fp16"
  BATCHES=1,32,256 WARMUP=20 ITERS=100
else
  echo "gpu-check: dry run on $DEVICE" | tee "$OUT/gpu.txt"
  REF_PRECISIONS=bf16 PARITY="fp32 bf16" BENCH="fp32"
  BATCHES=1,8 WARMUP=2 ITERS=3
fi
$BIN info --json | tee "$OUT/info.json"
status=0
# Like-for-like references: PyTorch's own reduced-precision logits on this device (needs
# torchvision).
if python3 -c "import torchvision" 2>/dev/null; then
  for arch in mobilenet_v2 mobilenet_v3_large; do
    python3 $G/export.py reference --arch $arch --weights $G/$arch.safetensors --batch 8 \
      --precisions $REF_PRECISIONS --device "$DEVICE" --out $G/$arch-ref.safetensors || status=1
  done
else
  echo "gpu-check: no torchvision here: fp16/bf16 are compared with the fp32 reference" >&2
fi
for arch in mobilenet_v2 mobilenet_v3_large; do
  for p in $PARITY; do
    echo "== parity $arch $DEVICE $p"
    $BIN parity --arch $arch --weights $G/$arch.safetensors --reference $G/$arch-ref.safetensors \
      --device "$DEVICE" --precision $p --json | tee "$OUT/parity-$arch-$p.json" || status=1
  done
done
for arch in mobilenet_v2 mobilenet_v3_large; do
  for p in $BENCH; do
    $BIN bench --arch $arch --device "$DEVICE" --precision $p --batch-sizes $BATCHES \
      --warmup $WARMUP --iters $ITERS --json | tee "$OUT/bench-ours-$arch-$p.json" || status=1
  done
done
# Data-parallel training on this device under torchrun, one rank (one GPU: NCCL refuses two ranks
# on one device): c10d's NCCL backend (Gloo on the CPU) and the Reducer, against the same
# training in a plain process. A group of one reduces nothing, so the two must agree up to the
# device's own run-to-run noise.
if command -v torchrun >/dev/null 2>&1; then
  echo "== data-parallel train on $DEVICE, torchrun --nproc-per-node 1, against a plain run"
  TRAIN="train --arch mobilenet_v2 --width-mult 0.35 --norm batch --dropout 0 --steps 6 \
    --batch-size 4 --resolution 64 --augment none --no-shuffle --optimizer sgd --lr 0.01 \
    --data $G/train-data --val $G/train-data --json"
  rm -rf "$OUT/ddp1" "$OUT/plain"
  torchrun --no-python --standalone --nproc-per-node 1 $BIN $TRAIN --device "${DEVICE/cuda/auto}" \
    --out "$OUT/ddp1" > "$OUT/train-ddp1.jsonl" 2> "$OUT/train-ddp1.err" || { status=1; tail -5 "$OUT/train-ddp1.err"; }
  $BIN $TRAIN --device "$DEVICE" --out "$OUT/plain" > "$OUT/train-plain.jsonl" 2> "$OUT/train-plain.err" \
    || { status=1; tail -5 "$OUT/train-plain.err"; }
  python3 - "$OUT" <<'PY' || status=1
import json, sys, torch
out = sys.argv[1]
a = torch.load(f"{out}/ddp1/model.pth", map_location="cpu")
b = torch.load(f"{out}/plain/model.pth", map_location="cpu")
worst = max(((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp(min=1e-12)).item()
            for k in b if b[k].is_floating_point())
res = {"check": "ddp-one-rank-vs-plain", "worst_relative_difference": worst, "ok": worst < 1e-3}
print(json.dumps(res)); json.dump(res, open(f"{out}/ddp-vs-plain.json", "w"))
sys.exit(0 if res["ok"] else 1)
PY
else
  echo "gpu-check: no torchrun here, no data-parallel check" >&2
fi
python3 -c "import torchvision" 2>/dev/null || { echo "gpu-check: no torchvision, no PyTorch bench" >&2; exit $status; }
python3 - "$OUT" "$DEVICE" "$BATCHES" "$WARMUP" "$ITERS" "$BENCH" <<'PY' || status=1
import json, sys, time, torch, torchvision
out, device, batches, warmup, iters, precisions = sys.argv[1:]
batches, warmup, iters = [int(b) for b in batches.split(",")], int(warmup), int(iters)
dtypes = {"fp32": torch.float32, "fp16": torch.float16}
torch.backends.cudnn.benchmark = True
def sync():
    if device == "cuda":
        torch.cuda.synchronize()
name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
res = {"device": name, "torch": torch.__version__, "results": []}
for arch in ["mobilenet_v2", "mobilenet_v3_large"]:
    for p in precisions.split():
        dtype = dtypes[p]
        m = getattr(torchvision.models, arch)().eval().to(device, dtype).to(memory_format=torch.channels_last)
        for bs in batches:
            x = torch.randn(bs, 3, 224, 224, device=device, dtype=dtype).to(memory_format=torch.channels_last)
            with torch.no_grad():
                for _ in range(warmup): m(x)
                sync()
                ts = []
                for _ in range(iters):
                    s = time.perf_counter(); m(x); sync(); ts.append((time.perf_counter() - s) * 1e3)
            ts.sort()
            p50 = ts[len(ts) // 2]
            r = {"arch": arch, "dtype": p, "batch_size": bs, "p50_ms": p50, "images_per_s": bs / p50 * 1e3}
            res["results"].append(r); print("pytorch eager", r)
json.dump(res, open(f"{out}/bench-pytorch.json", "w"), indent=1)
PY
exit $status
