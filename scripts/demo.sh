#!/usr/bin/env bash
# The demo (`make demo`): classify the sample photos in weights/samples/ with MobileNet V2.
#
# Uses torchvision's published IMAGENET1K_V2 weights (weights/mobilenet_v2-7ebf99e0.pth),
# downloading them first when this machine has internet access. Without them it falls back to
# seeded random weights, so that the whole pipeline still runs, and says loudly that the labels
# are then meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python3
BIN=target/release/mobilenet
WEIGHTS=weights/mobilenet_v2-7ebf99e0.pth
SEEDED=weights/generated/mobilenet_v2-seeded.pth
SAMPLES=weights/samples

if [ ! -x "$PY" ]; then
  echo "demo: $PY is missing; run \`make setup\` first." >&2
  exit 1
fi

cargo build --release

if [ ! -f "$WEIGHTS" ]; then
  echo "demo: $WEIGHTS is missing; trying to download it (weights/export.py pretrained)..." >&2
  if ! "$PY" weights/export.py pretrained --arch mobilenet_v2; then
    echo "demo: the download failed (no internet access?)." >&2
  fi
fi

if [ -f "$WEIGHTS" ]; then
  echo "demo: classifying $SAMPLES/ with $WEIGHTS (torchvision IMAGENET1K_V2)" >&2
  exec "$BIN" classify --weights "$WEIGHTS" "$SAMPLES"
fi

mkdir -p "$(dirname "$SEEDED")"
if [ ! -f "$SEEDED" ]; then
  "$PY" weights/export.py model --arch mobilenet_v2 --seed 0 --out "$SEEDED"
fi
cat >&2 <<NOTICE

################################################################################################
#  NOTICE: THE PUBLISHED WEIGHTS ARE NOT HERE. THIS DEMO USES SEEDED RANDOM WEIGHTS
#  ($SEEDED).
#  THE LABELS AND PROBABILITIES BELOW ARE MEANINGLESS (untrained weights, near-uniform output):
#  they only show that decoding, preprocessing, the model and the output run end to end.
#  For real predictions run \`make weights\` on a machine with internet access (it downloads
#  $WEIGHTS) and copy the file here.
################################################################################################

NOTICE
"$BIN" classify --weights "$SEEDED" "$SAMPLES"
