"""Fits/s through the stores: SQLite (optionally an older tree's too), Redis behind one
replica, Redis behind two replicas.

    python -m bench.store [--rounds 3] [--seconds 4] [--old-tree /tmp/old-bnaas] [--nice 10]

Starts a ``redis-server`` (AOF everysec, temporary folder) and ``bnaas serve`` processes on
free loopback ports (one worker each; ``--old-tree`` adds a server run from that tree, with its
``.venv`` when it has one, on a fresh SQLite file, and two replicas of that tree on a
second redis-server: "redis old x1" and "redis old x2"), then drives fits (``?output=false``, .npy
bodies) with ``wrk`` and bench/wrk/fit.lua: keep-alive connections, fits round-robin over the
sessions, wrk thread k on replica k mod n. Two loads:
- "8 sessions": ``--clients`` connections over 8 sessions;
- "hot": ``--hot`` connections on one session.
wrk is C and runs under ``nice``: on a 2-core machine a Python load generator takes the CPU
the servers need (the replica ratio then measures the generator). Rounds are interleaved
(setup order rotates each round); the report gives medians with [min-max] over rounds, and the
ratios per round. Retries per commit, for Redis: the replicas' commit conflicts (each one costs
a re-read and another commit; ``bnaas_commits_total{outcome="conflict"}`` from ``/metrics``),
over acknowledged fits. Server CPU per fit counts the bnaas
processes and, for Redis, redis-server. Asserts nothing: the machine is shared, read ratios.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NPY = "application/x-npy"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up")


@contextmanager
def redis_server(folder: Path) -> Iterator[tuple[int, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
           "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
           "--logfile", str(folder / "redis.log")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    try:
        _wait(pong, "redis-server")
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


CONFLICTS = 'bnaas_commits_total{outcome="conflict"}'


def conflicts(ports: list[int]) -> float:
    """Commit conflicts so far, summed over these replicas (their ``/metrics``)."""
    total = 0.0
    for port in ports:
        status, body = _request(port, "GET", "/metrics")
        if status != 200:
            raise SystemExit(f"/metrics on port {port}: HTTP {status}")
        for line in body.decode().splitlines():
            if line.startswith(CONFLICTS):
                total += float(line.split()[-1])
    return total


@contextmanager
def bnaas(store: str, log: Path, tree: Path = ROOT) -> Iterator[tuple[int, int]]:
    """``bnaas serve`` from ``tree`` (its own .venv's Python when it has one)."""
    port = free_port()
    venv = tree / ".venv" / "bin" / "python"
    python = str(venv) if tree != ROOT and venv.exists() else sys.executable
    cmd = [python, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--store", store, "--device", "cpu", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tree, env=env)
    try:
        _wait(lambda: _request(port, "GET", "/readyz")[0] == 200, f"bnaas on {store}")
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def create(port: int, features: int) -> str:
    status, body = _request(
        port, "POST", "/v1/sessions", f'{{"num_features": {features}}}'.encode(),
        {"content-type": "application/json"},
    )  # fmt: skip
    if status != 201:
        raise SystemExit(f"create: HTTP {status}: {body[:200]!r}")
    return str(json.loads(body)["id"])


LUA = Path(__file__).resolve().parent / "wrk" / "fit.lua"


def wrk(
    ports: list[int],
    sessions: list[str],
    clients: int,
    body: Path,
    args: argparse.Namespace,
    seconds: float,
) -> tuple[dict[str, int], float]:
    """One wrk run (under ``nice``): its JSON summary and its own CPU seconds."""
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_SESSIONS": ",".join(sessions),
           "BENCH_PORTS": ",".join(map(str, ports)),
           "BENCH_IDEMPOTENCY": "1" if args.idempotency else "0",
           "BENCH_ORDER": args.order}  # fmt: skip
    threads = min(args.threads, clients)
    cmd = ["nice", "-n", str(args.nice), binary, "-t", str(threads), "-c", str(clients),
           "-d", f"{seconds:g}s", "--timeout", "30s", "-s", str(LUA),
           f"http://127.0.0.1:{ports[0]}/"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(out.strip().splitlines()[-1])
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return summary, cpu


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


class Setup:
    """A store behind one or more replicas, with its sessions created once."""

    def __init__(self, name: str, servers: list[tuple[int, int]], redis: tuple[int, int] | None):
        self.name, self.redis = name, redis
        self.ports = [port for port, _ in servers]
        self.pids = [pid for _, pid in servers] + ([redis[1]] if redis else [])
        self.sessions: dict[str, list[str]] = {}


# (setup, case) -> one dict per round
Results = dict[tuple[str, str], list[dict[str, float]]]


def measure(
    setup: Setup, case: str, clients: int, body: Path, args: argparse.Namespace
) -> dict[str, float]:
    sessions = setup.sessions[case]
    calls = conflicts(setup.ports) if setup.redis else 0
    cpu = cpu_seconds(setup.pids)
    summary, gen_cpu = wrk(setup.ports, sessions, clients, body, args, args.seconds)
    cpu = cpu_seconds(setup.pids) - cpu
    fits = summary["requests"] - summary["http_errors"]
    row = {
        "fits/s": fits / (summary["duration_us"] / 1e6),
        "p99 ms": summary["p99_us"] / 1000,
        "cpu ms/fit": 1000 * cpu / max(fits, 1),
        "gen ms/fit": 1000 * gen_cpu / max(fits, 1),
        "errors": summary["http_errors"] + summary["socket_errors"],
    }
    # Cores the servers (and redis-server) kept busy: what the setup got of the machine.
    row["server cores"] = row["fits/s"] * row["cpu ms/fit"] / 1000
    if setup.redis:
        row["retries"] = (conflicts(setup.ports) - calls) / max(fits, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8, help="connections, 8-session case")
    parser.add_argument("--hot", type=int, default=16, help="connections on the hot session")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--nice", type=int, default=10, help="niceness of wrk")
    parser.add_argument("--idempotency", action="store_true", help="unique Idempotency-Keys")
    parser.add_argument(
        "--order",
        choices=("rr", "random", "affine"),
        default="rr",
        help="sessions per wrk thread: in turn (threads in step: replicas meet on every "
        "session), a random one per fit, or in turn over its replica's own sessions (session "
        "j on replica j mod n, as behind a balancer that hashes the session id)",
    )
    parser.add_argument("--old-tree", type=Path, help="also serve SQLite and Redis from this tree")
    parser.add_argument("--no-sqlite", action="store_true", help="Redis setups only")
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(0, 1, (args.rows, args.features)).astype("f4")
    cases = {"8 sessions": (8, args.clients), "hot": (1, args.hot)}
    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="bnaas-bench-store-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        body = folder / "body.npy"
        body.write_bytes(npy(x))
        rport, rpid = stack.enter_context(redis_server(folder))
        url = f"redis://127.0.0.1:{rport}/0"

        def serve(name: str, store: str, tree: Path = ROOT) -> tuple[int, int]:
            return stack.enter_context(bnaas(store, folder / f"{name}.log", tree))

        setups: list[Setup] = []
        if args.old_tree and not args.no_sqlite:
            old = serve("sqlite-old", f"sqlite:///{folder / 'old.db'}", args.old_tree.resolve())
            setups.append(Setup("sqlite old", [old], None))
        if not args.no_sqlite:
            sqlite = serve("sqlite", f"sqlite:///{folder / 'new.db'}")
            setups.append(Setup("sqlite", [sqlite], None))
        a, b = serve("redis-a", url), serve("redis-b", url)
        # x1 is replica a alone; b idles meanwhile (an idle server costs no CPU).
        setups += [Setup("redis x1", [a], (rport, rpid)), Setup("redis x2", [a, b], (rport, rpid))]
        if args.old_tree and (args.old_tree / "service" / "stores" / "redis.py").exists():
            # The older release's replicas, on the same Redis (its own Function library); a
            # tree from before the Redis store only compares SQLite.
            # Its own redis-server: Function libraries are server-wide, and each release
            # loads its own at startup (the last one started would serve both).
            (folder / "old").mkdir()
            old_redis = stack.enter_context(redis_server(folder / "old"))
            old_url = f"redis://127.0.0.1:{old_redis[0]}/0"
            old_a, old_b = (serve(f"redis-old-{n}", old_url, args.old_tree.resolve()) for n in "ab")
            setups += [Setup("redis old x1", [old_a], old_redis),
                       Setup("redis old x2", [old_a, old_b], old_redis)]  # fmt: skip
        for setup in setups:
            for case, (n, clients) in cases.items():
                setup.sessions[case] = [create(setup.ports[0], args.features) for _ in range(n)]
                wrk(setup.ports, setup.sessions[case], clients, body, args, 1.0)  # warm-up
        for r in range(args.rounds):
            for setup in setups[r % len(setups) :] + setups[: r % len(setups)]:
                for case, (_, clients) in cases.items():
                    row = measure(setup, case, clients, body, args)
                    results.setdefault((setup.name, case), []).append(row)
                    values = " ".join(f"{k}={v:.2f}" for k, v in row.items())
                    print(f"round {r + 1} {setup.name:<12} {case:<10} {values}", flush=True)
    _report(results, args)


def _spread(values: list[float], fmt: str = ".0f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def _report(results: Results, args: argparse.Namespace) -> None:
    print()
    # Other work on the machine takes the cores a second replica would use: say how busy it was.
    print(
        "load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print(f"fits of ({args.rows}, {args.features}) float32 .npy, ?output=false, order "
          f"{args.order}, wrk -t{args.threads} nice {args.nice}, {args.seconds:g} s x "
          f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs; median [min-max]")  # fmt: skip
    print(f"{'store':<12} {'case':<26} {'fits/s':>16} {'p99 ms':>18} {'retries/commit':>20} "
          f"{'server CPU ms/fit':>18} {'cores':>5} {'wrk ms/fit':>11} {'errors':>7}")  # fmt: skip
    for (name, case), rows in results.items():
        clients = args.hot if case == "hot" else args.clients
        col = {k: [row[k] for row in rows] for k in rows[0]}
        retries = _spread(col["retries"], ".3f") if "retries" in col else "-"
        print(f"{name:<12} {f'{case} ({clients} clients)':<26} {_spread(col['fits/s']):>16} "
              f"{_spread(col['p99 ms'], '.1f'):>18} {retries:>20} "
              f"{_spread(col['cpu ms/fit'], '.2f'):>18} "
              f"{statistics.median(col['server cores']):>5.2f} "
              f"{statistics.median(col['gen ms/fit']):>11.2f} "
              f"{sum(col['errors']):>7.0f}")  # fmt: skip
    print()

    def ratio(top: str, bottom: str, case: str) -> list[float]:
        pairs = zip(results[(top, case)], results[(bottom, case)], strict=True)
        return [t["fits/s"] / b["fits/s"] for t, b in pairs]

    for case in cases_of(results):
        if ("sqlite old", case) in results:
            floor = "  (floor: >= 1.3)" if case == "8 sessions" else ""
            new_old = _spread(ratio("sqlite", "sqlite old", case), ".2f")
            print(f"{case}: sqlite new / old = {new_old}{floor}")
        if ("redis old x2", case) in results:
            new_old = _spread(ratio("redis x2", "redis old x2", case), ".2f")
            print(f"{case}: redis x2 new / old = {new_old}")
            old_ratio = _spread(ratio("redis old x2", "redis old x1", case), ".2f")
            print(f"{case}: redis old x2 / old x1 = {old_ratio}")
        floor = "  (floor: >= 1.3)" if case == "8 sessions" else ""
        print(
            f"{case}: redis x2 / x1 = {_spread(ratio('redis x2', 'redis x1', case), '.2f')}{floor}"
        )
    for name in ("redis x2", "redis old x2"):
        if (name, "hot") in results:
            hot = [row["retries"] for row in results[(name, "hot")]]
            print(
                f"hot, {name}, {args.hot} clients: retries per commit = {_spread(hot, '.3f')} "
                "(floor: < 1)"
            )


def cases_of(results: Results) -> list[str]:
    return list(dict.fromkeys(case for _, case in results))


if __name__ == "__main__":
    main()
