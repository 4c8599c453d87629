#!/usr/bin/env bash
# A fine-tuning run end to end, on real data that a package ships: scikit-learn's 8x8 digits
# (1,797 images; scripts/digits_imagefolder.py), upscaled to 64x64, as an ImageFolder.
#
#   bash scripts/finetune_digits.sh [OUT]      (make finetune-demo; OUT: bench-results/finetune-digits)
#
# The initial weights are a 1000-class MobileNetV2 (width 0.5): the published ImageNet weights
# when weights/ has them at that width (it does not: torchvision publishes width 1.0 only), else
# seeded ones written by torchvision (weights/export.py model). `train` re-initializes the
# classifier for the 10 digits and fine-tunes every layer; then `classify` reads the model card
# beside the weights and labels validation images with the digit names.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python3
BIN=target/release/mobilenet
OUT=${1:-bench-results/finetune-digits}
DATA=bench-results/digits-64
mkdir -p bench-results
[ -d "$DATA/val" ] || $PY scripts/digits_imagefolder.py "$DATA" --size 64
INIT=bench-results/mobilenet_v2_050-seeded.pth
[ -f "$INIT" ] || $PY weights/export.py model --arch mobilenet_v2 --width-mult 0.5 --seed 0 --out "$INIT"
rm -rf "$OUT"
$BIN train --weights "$INIT" --data "$DATA/train" --val "$DATA/val" \
  --resolution 64 --batch-size 32 --epochs 6 --lr 0.02 --schedule cosine --warmup-epochs 1 \
  --augment none --label-smoothing 0.1 --seed 0 --out "$OUT"
echo "--- metrics.jsonl (last epoch)"
tail -1 "$OUT/metrics.jsonl"
echo "--- classify, with the model card and class names from beside the weights"
$BIN classify --weights "$OUT/model.pth" --top-k 2 "$DATA/val/3" | head -8
