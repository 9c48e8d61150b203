#!/usr/bin/env bash
# vaelab's GPU benchmark: on a machine with a CUDA GPU, in under 5 minutes, it prints the
# training step against a hand-written torch step, epochs per second of the 784-300-300-40 VAE,
# importance-sampling points per second at K = 5000, and a 2-process NCCL run when two GPUs are
# present (benchmarks/gpu.py says how each is measured).
#
#   bash benchmarks/gpu.sh                 # the first GPU; extra arguments go to gpu.py
#   CUDA_VISIBLE_DEVICES=3 bash benchmarks/gpu.sh --rounds 3
#   bash benchmarks/gpu.sh --smoke         # the CPU, tiny sizes, seconds: the same script path
#                                          # that tests/test_benchmarks.py runs, so it stays runnable
#
# It needs a CUDA build of torch (the CPU wheel that `make` installs has none): install the
# project into an environment whose torch sees the GPU, e.g. `pip install -e .` there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${1:-}" = "--smoke" ]; then
    exec timeout 120 "$PY" benchmarks/gpu.py --smoke
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: $PY's torch sees no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'not installed')); run it where one is, or: $PY benchmarks/gpu.py --smoke" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
exec timeout 290 "$PY" benchmarks/gpu.py --device cuda "$@"
