"""bncore against PyTorch's CPU kernel, same run, same threads: time ratio and bandwidth.

    python bench/engine.py [--repeat 7]

For each float32 shape: fit (train-mode forward + running update) and transform (inference),
ours vs ``torch.nn.functional.batch_norm`` with as many threads as cores, best of --repeat
loops of at least 20 ms;
GB/s counts one read of x and one write of y, next to a NumPy copy of the same array.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds http.py: run as a script, it must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import bncore

SHAPES = [(256, 64), (4096, 256), (65536, 512), (32, 64, 56, 56)]
FLOORS = {(65536, 512): 1.0, (32, 64, 56, 56): 1.0}


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Seconds per call: the best of ``repeat`` timings of a loop long enough (>= 20 ms) for
    the clock and this noisy machine, so microsecond calls are measured as well as big ones."""
    start = time.perf_counter()
    fn()
    loops = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t) / loops)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    f = torch.nn.functional.batch_norm
    print(f"threads: {torch.get_num_threads()}  numpy {np.__version__}  torch {torch.__version__}")
    print(
        f"{'shape':18} {'op':9} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'floor':>5} "
        f"{'ours GB/s':>9} {'copy GB/s':>9}"
    )
    below = 0
    for shape in SHAPES:
        x = np.random.default_rng(0).normal(3, 2, shape).astype(np.float32)
        c = shape[1]
        tx = torch.from_numpy(x)
        rm, rv, w, b = torch.zeros(c), torch.ones(c), torch.ones(c), torch.zeros(c)
        state = bncore.initial_state(bncore.BNConfig(c))
        fitted, _ = bncore.fit(state, x)
        copy_t = best(x.copy, args.repeat)
        gbytes = 2 * x.nbytes / 1e9
        floor = FLOORS.get(shape, 2.0)
        runs = (
            ("fit", partial(bncore.fit, state, x), partial(f, tx, rm, rv, w, b, True, 0.1, 1e-5)),
            (
                "transform",
                partial(bncore.transform, fitted, x),
                partial(f, tx, rm, rv, w, b, False, 0.1, 1e-5),
            ),
        )
        for op, ours, theirs in runs:
            t_ours, t_torch = best(ours, args.repeat), best(theirs, args.repeat)
            ratio = t_ours / t_torch
            below += ratio > floor
            print(
                f"{'x'.join(map(str, shape)):18} {op:9} {t_ours * 1e3:9.3f} {t_torch * 1e3:9.3f} "
                f"{ratio:6.2f} {floor:5.1f} {gbytes / t_ours:9.2f} {gbytes / copy_t:9.2f}"
                + ("" if ratio <= floor else "  ABOVE FLOOR")
            )
    print(f"{below} of {2 * len(SHAPES)} ratios above their floor")


if __name__ == "__main__":
    main()
