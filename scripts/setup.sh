#!/usr/bin/env bash
# Creates the project-local .venv with the pinned Python side (weights/requirements.txt) and the
# .libtorch link that .cargo/config.toml points LIBTORCH at, and installs cmake and nasm (apt-get)
# when missing. Idempotent: a stamp file records the
# requirements it was made from, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "make setup: no python3 on PATH; install Python 3.10 or newer." >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "make setup: $("$PY" --version 2>&1) is too old; Python 3.10 or newer is needed." >&2
  exit 1
fi

# cmake and nasm build libjpeg-turbo (turbojpeg-sys, the JPEG decoder Pillow ships) from source.
missing=()
for tool in cmake nasm; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make setup: ${missing[*]} missing (needed to build libjpeg-turbo); install them as root" \
         "(e.g. apt-get install ${missing[*]})." >&2
    exit 1
  fi
  echo "make setup: installing ${missing[*]} with apt-get" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends "${missing[@]}"; } </dev/null >/dev/null; then
    echo "make setup: apt-get failed to install ${missing[*]} (is the package registry reachable?)" >&2
    exit 1
  fi
fi

REQ=weights/requirements.txt
STAMP=.venv/.setup-stamp
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -e .libtorch/lib ] \
   && .venv/bin/python3 scripts/check_torch.py 2>/dev/null; then
  exit 0
fi

[ -x .venv/bin/python3 ] || "$PY" -m venv .venv
.venv/bin/python3 -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# One package at a time, so a failure names the package that failed.
while read -r line; do
  pkg=${line%%#*}
  pkg=$(echo "$pkg" | tr -d '[:space:]')
  [ -n "$pkg" ] || continue
  echo "make setup: installing $pkg" >&2
  if ! .venv/bin/python3 -m pip install --quiet --disable-pip-version-check "$pkg" -c "$REQ"; then
    echo "make setup: pip failed to install $pkg (is the package registry reachable?)" >&2
    exit 1
  fi
done < "$REQ"

torch_dir=$(.venv/bin/python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" .libtorch
echo "$want" > "$STAMP"
echo "make setup: done ($(.venv/bin/python3 -c 'import torch; print("torch", torch.__version__)'))" >&2
