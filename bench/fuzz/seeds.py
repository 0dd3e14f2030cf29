"""Seed corpus for fuzz_decoders.py, one valid body per decoder: ``python seeds.py DIR``."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import orjson
import safetensors.numpy

from service import codecs

X = np.arange(12, dtype=np.float32).reshape(4, 3)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    v2 = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [4, 3]}]}
    head = orjson.dumps(
        {"inputs": [{**v2["inputs"][0], "parameters": {"binary_data_size": 48}}]}  # type: ignore[dict-item]
    )
    seeds = [
        bytes([0]) + codecs.encode_npy(X),
        bytes([1]) + orjson.dumps({"data": X.tolist(), "shape": [4, 3]}),
        bytes([2]) + safetensors.numpy.save({"data": X, "grad_output": X}),
        bytes([3]) + orjson.dumps({"data": X.tolist(), "grad_output": X.tolist()}),
        bytes([4]) + orjson.dumps({"inputs": [{**v2["inputs"][0], "data": X.ravel().tolist()}]}),  # type: ignore[dict-item]
        bytes([5]) + len(head).to_bytes(2, "little") + head + X.tobytes(),
        bytes([6]) + gzip.compress(b"0" * 1000),
        # The JSON fast path's bodies: nested, and flat with a shape (float64 session).
        bytes([0x81]) + orjson.dumps({"data": X}, option=orjson.OPT_SERIALIZE_NUMPY),
        bytes([1]) + orjson.dumps({"data": X.ravel().tolist(), "shape": [4, 3]}),
        bytes([1]) + b"[[1e-5, -0, 12, 3.5E+2], [null, 2e308, 9007199254740993, 1]]",
    ]
    for i, seed in enumerate(seeds):
        (out / f"seed-{i}").write_bytes(seed)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz-corpus"))
