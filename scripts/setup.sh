#!/usr/bin/env bash
# Create .venv and install convirt with its test dependencies (idempotent; ~2 minutes the first time).
# CPU machines get PyTorch's default wheels. For CUDA, install torch/torchvision into .venv first
# as https://pytorch.org/get-started/locally/ says (e.g. --index-url .../whl/cu126), then run this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# pip's "Location ... is ignored" lines (local mirror settings) are noise; failures still fail.
pipq() { python -m pip install -q "$@" 2>&1 | { grep -v "is ignored" || true; }; }
python -c "import torch, torchvision" 2>/dev/null || pipq "torch==2.14.1" "torchvision==0.29.1"
pipq -e ".[test]"
python -c "import convirt, torch; print('convirt', convirt.__version__, '| torch', torch.__version__)"
