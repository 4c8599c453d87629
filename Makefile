# The two commands a fresh machine needs: `make demo` and `make test`. Everything else is a step.
SHELL := /bin/bash
PY := .venv/bin/python3
CARGO ?= cargo
BIN := target/release/mobilenet

.PHONY: setup check-torch build release test fixtures demo weights bench lint fmt clean norm-study finetune-demo

## Create .venv with the pinned torch/torchvision/timm and link .libtorch (idempotent).
setup:
	@bash scripts/setup.sh

## Fail early, naming both versions, if .venv holds another torch than the pin.
check-torch: setup
	@$(PY) scripts/check_torch.py

build: check-torch
	$(CARGO) build

release: check-torch
	$(CARGO) build --release

## Reference tensors and weight files from the venv's torch, torchvision and timm (seeded).
fixtures: check-torch
	@$(PY) weights/export.py fixtures --out fixtures
	@$(PY) tests/gen_norm.py --out fixtures/norm
	@$(PY) tests/gen_weights.py --out fixtures/weights
	@$(PY) tests/gen_classify.py --out fixtures/classify
	@$(PY) tests/gen_optim.py --out fixtures/optim
	@$(PY) tests/gen_train.py --out fixtures/train
	@$(PY) tests/gen_decode.py --out fixtures/decode
	@$(PY) tests/gen_dist.py --out fixtures/dist
	@$(PY) tests/gen_trained.py --out fixtures/trained
	@$(PY) tests/gen_pil.py --out fixtures/pil

test: check-torch fixtures
	$(CARGO) fmt --check
	$(CARGO) build --release
	$(CARGO) test --release -- --test-threads 2
	$(PY) scripts/norm_study.py --smoke
	$(PY) scripts/norm_study.py --replicas 4 --smoke
	$(PY) scripts/train_compare.py --smoke
	$(PY) scripts/classify_compare.py --smoke
	$(PY) scripts/bench_compare.py --arch mobilenet_v3_small --smoke
	$(PY) scripts/thread_scaling.py --arch mobilenet_v3_small --smoke
	bash scripts/dense_compare.sh --smoke

## BatchNorm against GroupNorm, LayerNorm and InstanceNorm as the batch shrinks (about 40 min on
## 2 cores): bench-results/norm-study.json and docs/norm-study.png.
norm-study: release
	$(PY) scripts/norm_study.py

## A fine-tuning run on scikit-learn's digits, then classify with the model card it writes.
finetune-demo: release
	bash scripts/finetune_digits.sh

## The main job end to end: set-up, build, weights (pretrained when downloadable, else seeded
## with a loud notice), classify the sample photos.
demo: check-torch
	@bash scripts/demo.sh

## Published weights into weights/ (needs internet): torchvision V2/V3 .pth, timm V1 safetensors.
weights: check-torch
	$(PY) weights/export.py pretrained --out weights

## Side-by-side CPU benchmark against PyTorch eager, TorchScript and ONNX Runtime; training
## steps per second against PyTorch eager on scikit-learn's digits.
bench: release
	$(PY) scripts/bench_compare.py --arch mobilenet_v2 --rounds 5 --iters 20 --precisions fp32,bf16
	$(PY) scripts/bench_compare.py --arch mobilenet_v1 --rounds 5 --iters 20 --precisions fp32,bf16
	$(PY) scripts/bench_compare.py --arch mobilenet_v3_large --rounds 5 --iters 20 --precisions fp32,bf16
	$(PY) scripts/bench_compare.py --arch mobilenet_v3_small --rounds 5 --iters 20 --precisions fp32,bf16
	$(PY) scripts/thread_scaling.py --arch mobilenet_v2
	$(PY) scripts/thread_scaling.py --arch mobilenet_v3_small
	$(PY) scripts/train_compare.py --arch mobilenet_v2 --steps 20 --batch-size 32 --resolution 64
	$(PY) scripts/classify_compare.py
	bash scripts/dense_compare.sh

## Formatting, clippy, and the library built without the `cli` feature, with no clap or
## indicatif among its dependencies.
lint: check-torch
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --no-default-features -- -D warnings
	@if $(CARGO) tree --no-default-features -e normal --prefix none | grep -E '^(clap|indicatif) '; then \
	  echo "lint: the library without the cli feature depends on the crates above" >&2; exit 1; fi

fmt:
	$(CARGO) fmt

clean:
	rm -rf target fixtures
