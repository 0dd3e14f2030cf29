#!/usr/bin/env bash
# On a machine with a CUDA GPU, CuPy, torch, numpy, pytest and hypothesis (no install step):
# the CuPy tests of bncore, then the GPU engine benchmark. Prints both; exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import cupy; print('cupy', cupy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())"
python3 -m pytest -q -p no:cacheprovider -W default -m gpu tests/bncore/test_gpu.py
python3 bench/gpu.py --repeat 20
