"""Per-call cost of the bncore functions on a service fit's path, this tree against another.

    python bench/engine_calls.py [--old-tree /tmp/engine-old] [--rounds 5]

For float32 batches of 32x64 and 256x64: microseconds of thread CPU time per call of
``batch_stats``, ``apply_batch``, ``drift``, ``Drift.summary``, ``normalize``, the five in a row
(what a service fit computes), ``fit``, ``transform``, ``state_to_bytes`` and
``state_from_bytes``; best of 5 loops of at least 20 ms each, one process per tree and round,
rounds interleaved (old, new, old, ...) so that a busy neighbour hits both alike. Prints the
median and range over the rounds, and new/old per row.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds http.py: run as a script, it must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

SHAPES = [(32, 64), (256, 64)]
ROOT = Path(__file__).resolve().parent.parent


def _per_call(fn: Callable[[], Any]) -> float:
    """Microseconds of thread CPU time per call: best of 5 loops of >= 20 ms."""
    fn()
    start = time.thread_time()
    fn()
    loops = max(1, int(0.02 / max(time.thread_time() - start, 1e-7)))
    best = float("inf")
    for _ in range(5):
        t = time.thread_time()
        for _ in range(loops):
            fn()
        best = min(best, (time.thread_time() - t) / loops)
    return best * 1e6


def _calls(shape: tuple[int, int]) -> dict[str, Callable[[], Any]]:
    """The calls to time on one float32 batch, on a state fitted once."""
    import numpy as np

    import bncore as bn

    x = np.random.default_rng(0).normal(3, 2, shape).astype(np.float32)
    state, _ = bn.fit(bn.initial_state(bn.BNConfig(shape[1])), x)
    batch = bn.batch_stats(state, x)
    drift = bn.drift(state, batch)
    assert drift is not None
    record = bn.state_to_bytes(state)

    def service_fit() -> tuple[bn.BNState, Any, Any]:
        batch = bn.batch_stats(state, x)
        after = bn.apply_batch(state, batch)
        d = bn.drift(state, batch)
        summary = d.summary() if d is not None else None
        return after, summary, bn.normalize(state, x, batch)

    return {
        "batch_stats": lambda: bn.batch_stats(state, x),
        "apply_batch": lambda: bn.apply_batch(state, batch),
        "drift": lambda: bn.drift(state, batch),
        "Drift.summary": drift.summary,
        "normalize": lambda: bn.normalize(state, x, batch),
        "the five in a row": service_fit,
        "fit": lambda: bn.fit(state, x),
        "transform": lambda: bn.transform(state, x),
        "state_to_bytes": lambda: bn.state_to_bytes(state),
        "state_from_bytes": lambda: bn.state_from_bytes(record),
    }


def measure() -> dict[str, float]:
    """One tree's per-call costs (run with that tree first on sys.path)."""
    out: dict[str, float] = {}
    for shape in SHAPES:
        label = "x".join(map(str, shape))
        for name, fn in _calls(shape).items():
            out[f"{label} {name}"] = _per_call(fn)
    return out


def _run(tree: Path) -> dict[str, float]:
    """One round in a fresh process that imports bncore from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--measure"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr}")
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if Path(found.pop("bncore")).resolve().parent.parent != tree:
        raise SystemExit(f"bncore was not imported from {tree}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-tree", type=Path, help="a checkout to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child: this tree's numbers as JSON
        import bncore

        print(json.dumps({"bncore": bncore.__file__, **measure()}))
        return
    trees = {"new": ROOT}
    if args.old_tree is not None:
        trees = {"old": args.old_tree.resolve(), "new": ROOT}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            runs[name].append(_run(tree))
    print(f"us per call, thread CPU time, median [min-max] of {args.rounds} interleaved rounds")
    print(f"load {os.getloadavg()[0]:.1f}")
    rows = list(runs["new"][0])
    head = f"{'call':32}" + "".join(f"{k:>22}" for k in trees)
    print(head + ("   new/old" if "old" in trees else ""))
    for row in rows:
        cells, medians = "", {}
        for name in trees:
            values = [r[row] for r in runs[name]]
            medians[name] = statistics.median(values)
            cells += f"{medians[name]:9.2f} [{min(values):5.2f}-{max(values):5.2f}]"
        ratio = f"   {medians['new'] / medians['old']:7.2f}" if "old" in trees else ""
        print(f"{row:32}{cells}{ratio}")


if __name__ == "__main__":
    main()
