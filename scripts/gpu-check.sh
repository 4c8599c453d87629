#!/usr/bin/env bash
# On a GPU machine (torch installed, no Rust): parity on cuda in fp32, fp16 and bf16, then our
# bench beside PyTorch eager (fp16, channels-last, cuDNN benchmark) on the same GPU, in one run.
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
