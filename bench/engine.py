"""bncore against PyTorch's CPU kernel, same run, same threads: time ratio and bandwidth.

    python bench/engine.py [--repeat 7]

For each float32 shape: fit (train-mode forward + running update) and transform (inference),
ours vs ``torch.nn.functional.batch_norm`` with as many threads as cores (or --threads),
rounds interleaved (ours, torch, ours, ...) so that a noisy neighbour hits both sides alike,
best of --repeat loops of at least 20 ms each; GB/s counts one read of x and one write of y,
next to a NumPy copy of the same array. Floor: ratio ours/torch <= 1.0 on every row.

On a shared machine, ``--threads 1 --cpu`` compares the calling thread's CPU time (both sides
then compute in that one thread), which a busy neighbour does not inflate.

``--old-tree DIR --rounds N`` compares two checkouts: N rounds, each running DIR's
bench/engine.py and then this one (same arguments, one process each, interleaved), and prints
each tree's median and range of ours ms and of the ratio per row.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds http.py: run as a script, it must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import bncore

SHAPES = [(256, 64), (4096, 256), (65536, 512), (32, 64, 56, 56)]
FLOOR = 1.0  # issue 10: the engine ahead of torch at every size


def _loops(fn: Callable[[], Any]) -> int:
    """Calls per timed loop: enough for >= 20 ms, so microsecond calls are measured too."""
    fn()
    start = time.perf_counter()
    fn()
    return max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))


CLOCK = time.perf_counter  # --cpu: time.thread_time


def _timed(fn: Callable[[], Any], loops: int) -> float:
    t = CLOCK()
    for _ in range(loops):
        fn()
    return (CLOCK() - t) / loops


def best_pair(a: Callable[[], Any], b: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Seconds per call of ``a`` and ``b``: the best of ``repeat`` interleaved rounds."""
    la, lb = _loops(a), _loops(b)
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(_timed(a, la))
        tb.append(_timed(b, lb))
    return min(ta), min(tb)


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Seconds per call of one function (the copy reference)."""
    loops = _loops(fn)
    return min(_timed(fn, loops) for _ in range(repeat))


ROW = re.compile(r"^(\S+)\s+(fit|transform)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")


def compare_trees(old: Path, rounds: int, argv: list[str]) -> None:
    """Interleaved rounds of the old tree's bench/engine.py and this one; medians, ranges."""
    here = Path(__file__).resolve()
    trees = {
        "old": (old.resolve(), old.resolve() / "bench" / "engine.py"),
        "new": (here.parent.parent, here),
    }
    found: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    for _ in range(rounds):
        for name, (root, script) in trees.items():
            env = {**os.environ, "PYTHONPATH": str(root)}
            out = subprocess.run(
                [sys.executable, str(script), *argv],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for line in out.splitlines():
                m = ROW.match(line)
                if m:
                    cell = found.setdefault((m[1], m[2]), {"old": [], "new": []})[name]
                    cell.append((float(m[3]), float(m[5])))
    load = os.getloadavg()[0]
    print(f"{rounds} interleaved rounds of bench/engine.py {' '.join(argv)}; load {load:.1f}")
    head = f"{'old ratio [range]':>20} {'new ratio [range]':>20}"
    print(f"{'shape':14} {'op':9} {'old ms':>8} {'new ms':>8} {head}")
    for (shape, op), cells in found.items():
        ms = [statistics.median(t[0] for t in cells[k]) for k in ("old", "new")]
        ratios = ""
        for k in ("old", "new"):
            r = [t[1] for t in cells[k]]
            ratios += f" {statistics.median(r):7.2f} [{min(r):.2f}-{max(r):.2f}]"
        print(f"{shape:14} {op:9} {ms[0]:8.3f} {ms[1]:8.3f}{ratios}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cpu", action="store_true", help="thread CPU time (with --threads 1)")
    parser.add_argument("--old-tree", type=Path, help="a checkout to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="with --old-tree")
    args = parser.parse_args()
    if args.old_tree is not None:
        argv = ["--repeat", str(args.repeat), "--threads", str(args.threads)]
        compare_trees(args.old_tree, args.rounds, argv + (["--cpu"] if args.cpu else []))
        return
    if args.cpu:
        if args.threads != 1:
            parser.error("--cpu measures one thread: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    import torch

    torch.set_num_threads(args.threads)
    if args.threads == 1:  # ours too: no second thread for the big shapes
        from bncore import kernels

        kernels._PARALLEL = 1 << 62
    f = torch.nn.functional.batch_norm
    clock = "thread CPU time" if args.cpu else "wall time"
    print(
        f"threads: {torch.get_num_threads()}  numpy {np.__version__}  torch {torch.__version__}"
        f"  {clock}  load {os.getloadavg()[0]:.1f}"
    )
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
        floor = FLOOR
        runs = (
            ("fit", partial(bncore.fit, state, x), partial(f, tx, rm, rv, w, b, True, 0.1, 1e-5)),
            (
                "transform",
                partial(bncore.transform, fitted, x),
                partial(f, tx, rm, rv, w, b, False, 0.1, 1e-5),
            ),
        )
        for op, ours, theirs in runs:
            t_ours, t_torch = best_pair(ours, theirs, args.repeat)
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
