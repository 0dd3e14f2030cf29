"""Fits per second through the write path on SQLite, one tree against another in one run.

    python -m bench.write_path --tree OLD_TREE --tree . [--rounds 3] [--seconds 4]
    python -m bench.write_path --group-commit     # in this process: group commit off vs on
    python -m bench.write_path --direct --tree OLD_TREE --tree .   # the store alone, no HTTP

Each tree is served by its own ``bnaas serve`` (one worker, a fresh SQLite file, the tree on
PYTHONPATH), rounds interleaved. Two loads: 8 clients on 8 sessions, 16 clients on one hot
session; every fit is a 32x64 float32 .npy batch answered with its output. Prints fits/s and
p99 latency per tree (medians over rounds) and the ratio of each tree to the first.
Asserts nothing: the machine is shared, read the ratios.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

NPY = "application/x-npy"


def _npy(x: np.ndarray) -> bytes:  # type: ignore[type-arg]
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


BODY = _npy(np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32))


def _serve(tree: Path, db: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    cmd += ["--store", f"sqlite:///{db}", "--device", "cpu", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server from {tree} did not start")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Result = tuple[float, float, float]  # fits/s, p99 seconds, server CPU seconds per fit


def _load(url: str, sids: list[str], clients: int, seconds: float, pid: int) -> Result:
    """fits/s, p99 seconds and server CPU per fit: ``clients`` threads fitting ``sids``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        sid = sids[i % len(sids)]
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post(
                    f"{url}/v1/sessions/{sid}/fit",
                    content=BODY,
                    headers={"Content-Type": NPY, "Accept": NPY},
                )
                r.raise_for_status()
                latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    cpu0 = _cpu_s(pid)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = _cpu_s(pid) - cpu0
    flat = sorted(x for lat in latencies for x in lat)
    return len(flat) / elapsed, flat[int(0.99 * (len(flat) - 1))], cpu / len(flat)


def _round(tree: Path, seconds: float) -> dict[str, Result]:
    with tempfile.TemporaryDirectory() as tmp:
        port = 20000 + os.getpid() % 20000
        proc = _serve(tree, Path(tmp) / "bench.db", port)
        url = f"http://127.0.0.1:{port}"
        try:
            sids = [
                httpx.post(f"{url}/v1/sessions", json={"num_features": 64}).json()["id"]
                for _ in range(8)
            ]
            return {
                "8 sessions, 8 clients": _load(url, sids, 8, seconds, proc.pid),
                "1 hot session, 16 clients": _load(url, sids[:1], 16, seconds, proc.pid),
            }
        finally:
            proc.terminate()
            proc.wait(15)


def _in_process(max_batch: int, sessions: int, threads: int = 16, fits: int = 20) -> float:
    """fits/s of ``threads`` threads on ``sessions`` sessions, batches of ``max_batch``."""
    import bncore
    from service.commit import Commits
    from service.stores import SQLiteStore
    from service.stores.base import Session

    x = np.load(io.BytesIO(BODY))
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "b.db")
        store._group._max = max_batch
        now = time.time()
        for i in range(sessions):
            state = bncore.initial_state(bncore.BNConfig(64))
            store.create(Session(f"s{i}", state, 1, now, now))
        commits = Commits()

        def worker(k: int) -> None:
            for _ in range(fits):
                commits.fit(store, store.read(f"s{k % sessions}"), x)

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        store.close()
    return threads * fits / elapsed


_DIRECT = """
import sys, tempfile, threading, time
from pathlib import Path
import numpy as np, bncore
from service.stores import SQLiteStore
from service.stores.base import Session
sessions, threads, fits, rows = (int(a) for a in sys.argv[1:5])
x = np.random.default_rng(0).normal(size=(rows, 64)).astype(np.float32)
store = SQLiteStore(Path(tempfile.mkdtemp()) / "d.db")
now = time.time()
for i in range(sessions):
    store.create(Session(f"s{i}", bncore.initial_state(bncore.BNConfig(64)), 1, now, now))
if hasattr(store, "update"):  # the write path before service/commit.py
    def one(sid):
        store.get(sid)
        store.update(sid, lambda s: bncore.fit(s.state, x))
else:
    from service.commit import Commits
    commits = Commits()
    def one(sid):
        commits.fit(store, store.read(sid), x)
def worker(k):
    for _ in range(fits):
        one(f"s{k % sessions}")
pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
t0, c0 = time.perf_counter(), time.process_time()
for t in pool:
    t.start()
for t in pool:
    t.join()
n = threads * fits
print(n / (time.perf_counter() - t0), (time.process_time() - c0) / n)
"""


def _direct(trees: list[Path], rounds: int, rows: int) -> None:
    """The store and the write path alone (no HTTP), each tree in its own process."""
    for label, sessions in (("8 sessions", 8), ("1 hot session", 1)):
        rates: dict[Path, list[tuple[float, float]]] = {t: [] for t in trees}
        for _ in range(rounds):
            for tree in trees:
                env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
                out = subprocess.run(
                    [sys.executable, "-c", _DIRECT, str(sessions), "16", "25", str(rows)],
                    env=env,
                    capture_output=True,
                    check=True,
                    text=True,
                )
                rate, cpu = (float(v) for v in out.stdout.split())
                rates[tree].append((rate, cpu))
        print(f"\n{label}, 16 threads, {rows}x64 batches, in process (no HTTP)")
        ref = statistics.median(r for r, _ in rates[trees[0]])
        for tree in trees:
            rate = statistics.median(r for r, _ in rates[tree])
            cpu = statistics.median(c for _, c in rates[tree])
            print(
                f"  {tree!s:32s} {rate:6.0f} fits/s  x{rate / ref:.2f}  CPU {cpu * 1e6:5.0f} us/fit"
            )


def _group_commit(rounds: int) -> None:
    for label, sessions in (("8 sessions", 8), ("1 hot session", 1)):
        rates: dict[int, list[float]] = {1: [], 64: []}
        for _ in range(rounds):
            for m in rates:
                rates[m].append(_in_process(m, sessions))
        off, on = (statistics.median(rates[m]) for m in (1, 64))
        print(
            f"{label}, 16 threads: one transaction per fit {off:6.0f} fits/s, group commit "
            f"{on:6.0f} fits/s  x{on / off:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", action="append", type=Path, default=[])
    parser.add_argument("--group-commit", action="store_true")
    parser.add_argument("--direct", action="store_true")
    parser.add_argument("--rows", type=int, default=32, help="--direct: batch rows (N)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    if args.group_commit:
        _group_commit(args.rounds)
    if args.direct:
        _direct(args.tree, args.rounds, args.rows)
    if args.direct or not args.tree:
        return
    results: dict[Path, list[dict[str, Result]]] = {t: [] for t in args.tree}
    for _ in range(args.rounds):
        for tree in args.tree:  # interleaved: drifts in machine load hit every tree alike
            results[tree].append(_round(tree, args.seconds))
    base = args.tree[0]
    for load in results[base][0]:
        print(f"\n{load}")
        ref = statistics.median(r[load][0] for r in results[base])
        for tree in args.tree:
            rate = statistics.median(r[load][0] for r in results[tree])
            p99 = statistics.median(r[load][1] for r in results[tree])
            cpu = statistics.median(r[load][2] for r in results[tree])
            print(
                f"  {tree!s:32s} {rate:6.0f} fits/s  x{rate / ref:.2f}  p99 {p99 * 1e3:6.1f} ms"
                f"  server CPU {cpu * 1e6:5.0f} us/fit"
            )


if __name__ == "__main__":
    main()
