#!/usr/bin/env bash
# The GPU check of docs/cuda.md: CUDA tests, tokens/s and MFU (slm-126m, pn-126m; bf16, eager and compiled),
# CUDA against CPU logits, torchrun with 2 processes on the one GPU. Under 10 minutes on one GPU; one JSON
# file of figures. Without a GPU: one line, exit 2, nothing written.
#   bash bench/gpu_check.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=$(command -v python3 || command -v python)
exec "$python" bench/gpu_check.py --out "${1:-gpu_check.json}"
