#!/usr/bin/env bash
# On a GPU machine (torch installed, no Rust): parity on cuda in fp32, fp16 and bf16, then our
# bench beside PyTorch eager (fp16, channels-last, cuDNN benchmark) on the same GPU, in one run.
# Prepare with scripts/gpu-prepare.sh; run from the repository root as
#   export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
#   bash .gpu/gpu-check.sh
set -uo pipefail
G=.gpu
BIN=$G/mobilenet
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$BIN info --json | tee "$OUT/info.json"
status=0
# Like-for-like references: PyTorch's own fp16/bf16 logits on this GPU (needs torchvision).
if python3 -c "import torchvision" 2>/dev/null; then
  for arch in mobilenet_v2 mobilenet_v3_large; do
    python3 $G/export.py reference --arch $arch --weights $G/$arch.safetensors --batch 8 \
      --precisions fp16,bf16 --device cuda --out $G/$arch-ref.safetensors
  done
else
  echo "gpu-check: no torchvision here: fp16/bf16 are compared with the fp32 reference" >&2
fi
for arch in mobilenet_v2 mobilenet_v3_large; do
  for p in fp32 fp16 bf16; do
    echo "== parity $arch cuda $p"
    $BIN parity --arch $arch --weights $G/$arch.safetensors --reference $G/$arch-ref.safetensors \
      --device cuda --precision $p --json | tee "$OUT/parity-$arch-$p.json" || status=1
  done
done
for arch in mobilenet_v2 mobilenet_v3_large; do
  for p in fp32 fp16; do
    $BIN bench --arch $arch --device cuda --precision $p --batch-sizes 1,32,256 --warmup 20 \
      --iters 100 --json | tee "$OUT/bench-ours-$arch-$p.json"
  done
done
python3 -c "import torchvision" 2>/dev/null || { echo "gpu-check: no torchvision, no PyTorch bench" >&2; exit $status; }
python3 - "$OUT" <<'PY'
import json, sys, time, torch, torchvision
out = sys.argv[1]
torch.backends.cudnn.benchmark = True
res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": []}
for arch in ["mobilenet_v2", "mobilenet_v3_large"]:
    for dtype in [torch.float32, torch.float16]:
        m = getattr(torchvision.models, arch)().eval().cuda().to(dtype).to(memory_format=torch.channels_last)
        for bs in [1, 32, 256]:
            x = torch.randn(bs, 3, 224, 224, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
            with torch.no_grad():
                for _ in range(20): m(x)
                torch.cuda.synchronize()
                ts = []
                for _ in range(100):
                    s = time.perf_counter(); m(x); torch.cuda.synchronize(); ts.append((time.perf_counter() - s) * 1e3)
            ts.sort()
            r = {"arch": arch, "dtype": str(dtype), "batch_size": bs, "p50_ms": ts[50], "images_per_s": bs / ts[50] * 1e3}
            res["results"].append(r); print("pytorch eager", r)
json.dump(res, open(f"{out}/bench-pytorch.json", "w"), indent=1)
PY
exit $status
