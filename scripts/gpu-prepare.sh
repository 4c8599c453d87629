#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for scripts/gpu-check.sh on a GPU machine that has torch but no
# Rust: the release binary, seeded weights and parity references. Run here, then carry .gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
make release >/dev/null
rm -rf .gpu && mkdir -p .gpu
cp target/release/mobilenet .gpu/
# c10d's NCCL backend, which the binary loads at run time (found beside it on that machine).
nccl=$(ls -t target/release/build/mobilenet-*/out/libmobilenet_nccl.so 2>/dev/null | head -1)
if [ -n "$nccl" ]; then cp "$nccl" .gpu/; fi
cp scripts/gpu-check.sh weights/export.py .gpu/
cp -r fixtures/train/data .gpu/train-data  # the data-parallel check's 8 images
PY=.venv/bin/python3
for arch in mobilenet_v2 mobilenet_v3_large; do
  $PY weights/export.py model --arch "$arch" --seed 0 --out ".gpu/$arch.safetensors"
  $PY weights/export.py reference --arch "$arch" --weights ".gpu/$arch.safetensors" \
    --resolution 224 --batch 8 --out ".gpu/$arch-ref.safetensors"
done
echo "gpu-prepare: .gpu/ ready ($(du -sh .gpu | cut -f1))"
