"""bncore on the GPU against torch's CUDA batch_norm and a device copy, same run, same device.

    python bench/gpu.py [--repeat 50] [--rounds 5] [--kernels on|off|both]

Times with CUDA events (median of ``--repeat`` launches per round, rounds interleaved: ours,
torch, copy), for fit (train forward + running update) and transform (inference), float32,
on [65536, 512], [4096, 256], [256, 64] and NCHW [32, 64, 56, 56]. Prints milliseconds, the
ratio ours/torch, and GB/s against the copy's: a train forward moves 3x the array (read for
the statistics, read and write for the output), inference and the copy 2x. Asserts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds http.py: run as a script, it must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import bncore
from bncore import cuda_kernels

SHAPES = [(65536, 512), (4096, 256), (256, 64), (32, 64, 56, 56)]


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of one call, by CUDA events around each of ``repeat`` calls."""
    import cupy

    fn()  # compile and warm
    times = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernels", choices=("on", "off", "both"), default="both")
    args = parser.parse_args()
    import cupy
    import torch

    backend = bncore.select("cuda")
    print(f"backend: {backend.reason}; torch {torch.__version__} on {torch.cuda.get_device_name()}")
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.kernels]
    f = torch.nn.functional.batch_norm
    print(
        f"{'shape':16} {'op':9} {'kernels':7} {'ours ms':>9} {'torch ms':>9} {'copy ms':>8} "
        f"{'ratio':>6} {'range':>11} {'ours GB/s':>9} {'copy GB/s':>9} {'of copy':>7}"
    )
    for shape in SHAPES:
        c = shape[1]
        x = cupy.random.standard_normal(shape, dtype=cupy.float32) * 2 + 3
        tx = torch.as_tensor(x, device="cuda")
        rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
        w, b = torch.ones(c, device="cuda"), torch.zeros(c, device="cuda")
        state = bncore.initial_state(bncore.BNConfig(c), xp=cupy)
        fitted, _ = bncore.fit(state, x)
        for on in modes:
            cuda_kernels.enable(on)
            runs = (
                ("fit", partial(bncore.fit, state, x), partial(f, tx, rm, rv, w, b, True), 3),
                (
                    "transform",
                    partial(bncore.transform, fitted, x),
                    partial(f, tx, rm, rv, w, b, False),
                    2,
                ),
            )
            for op, ours, theirs, passes in runs:
                rows: list[tuple[float, float, float]] = []
                for _ in range(args.rounds):
                    rows.append(
                        (
                            timed(ours, args.repeat),
                            timed(theirs, args.repeat),
                            timed(x.copy, args.repeat),
                        )
                    )
                t_ours = statistics.median(r[0] for r in rows)
                t_torch = statistics.median(r[1] for r in rows)
                t_copy = statistics.median(r[2] for r in rows)
                ratios = [r[0] / r[1] for r in rows]
                ours_gbs = passes * x.nbytes / 1e9 / t_ours
                copy_gbs = 2 * x.nbytes / 1e9 / t_copy
                print(
                    f"{'x'.join(map(str, shape)):16} {op:9} {'on' if on else 'off':7} "
                    f"{t_ours * 1e3:9.3f} {t_torch * 1e3:9.3f} {t_copy * 1e3:8.3f} "
                    f"{t_ours / t_torch:6.2f} {min(ratios):5.2f}-{max(ratios):<5.2f} "
                    f"{ours_gbs:9.0f} {copy_gbs:9.0f} {ours_gbs / copy_gbs:7.0%}"
                )
    cuda_kernels.enable(False)


if __name__ == "__main__":
    main()
