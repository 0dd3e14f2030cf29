"""bncore on CuPy against torch's CUDA batch_norm, same run, same device.

    python bench/gpu.py [--repeat 20]

Prints, per float32 shape, fit and transform milliseconds (device-synchronized), the ratio
ours/torch, and our GB/s next to a device-to-device copy of the same array.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds http.py: run as a script, it must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import bncore

SHAPES = [(256, 64), (4096, 256), (65536, 512), (32, 64, 56, 56)]


def best(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    import cupy
    import torch

    backend = bncore.select("cuda")
    print(f"backend: {backend.reason}; torch {torch.__version__} on {torch.cuda.get_device_name()}")

    def sync() -> None:
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()

    f = torch.nn.functional.batch_norm
    print(
        f"{'shape':18} {'op':9} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} "
        f"{'ours GB/s':>9} {'copy GB/s':>9}"
    )
    for shape in SHAPES:
        c = shape[1]
        x = cupy.random.standard_normal(shape, dtype=cupy.float32) * 2 + 3
        tx = torch.as_tensor(x, device="cuda")
        rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
        w, b = torch.ones(c, device="cuda"), torch.zeros(c, device="cuda")
        state = bncore.initial_state(bncore.BNConfig(c), xp=cupy)
        fitted, _ = bncore.fit(state, x)
        copy_t = best(x.copy, sync, args.repeat)
        gbytes = 2 * x.nbytes / 1e9
        runs = (
            ("fit", partial(bncore.fit, state, x), partial(f, tx, rm, rv, w, b, True, 0.1, 1e-5)),
            (
                "transform",
                partial(bncore.transform, fitted, x),
                partial(f, tx, rm, rv, w, b, False, 0.1, 1e-5),
            ),
        )
        for op, ours, theirs in runs:
            t_ours, t_torch = best(ours, sync, args.repeat), best(theirs, sync, args.repeat)
            print(
                f"{'x'.join(map(str, shape)):18} {op:9} {t_ours * 1e3:9.3f} {t_torch * 1e3:9.3f} "
                f"{t_ours / t_torch:6.2f} {gbytes / t_ours:9.1f} {gbytes / copy_t:9.1f}"
            )


if __name__ == "__main__":
    main()
