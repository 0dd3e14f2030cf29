"""Fits/s through the stores: SQLite, Redis behind one replica, Redis behind two replicas.

    python bench/store.py [--seconds 4] [--features 64] [--rows 32] [--clients 8] [--hot 16]

Starts a ``redis-server`` (AOF everysec, temporary folder) and ``bnaas serve`` processes on
free loopback ports, then drives fits (``?output=false``, .npy bodies) from client threads
with keep-alive connections, alternating replicas request by request:
- "8 sessions": ``--clients`` clients, each on its own session;
- "hot": ``--hot`` clients on one session.
Prints fits/s, p99 latency and, for Redis, retries per commit (FCALL write calls minus
acknowledged fits: every commit conflict costs one more call), then the ratios the issue sets
floors on. Asserts nothing. The load generator is threads in this process: on a small machine
it competes with the servers, so compare ratios from one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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


def redis_command(port: int, *args: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((" ".join(args) + "\r\n").encode())
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith((b"+", b"-", b":")):
                break
        return data


def fcall_writes(port: int) -> int:
    """Calls of FCALL (commits, creates) so far; reads go through FCALL_RO."""
    for line in redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_fcall:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@contextmanager
def bnaas(store: str, log: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--store", store, "--device", "cpu", "--log-level", "warning"]  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
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


def load(
    ports: list[int], sessions: list[str], clients: int, body: bytes, seconds: float
) -> tuple[int, list[float]]:
    """Fits acknowledged and their latencies; client k fits ``sessions[k % len]``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=60) for p in ports]
        path = f"/v1/sessions/{sessions[k % len(sessions)]}/fit?output=false"
        headers = {"content-type": NPY}
        start.wait()
        end = time.perf_counter() + seconds
        i = k
        while time.perf_counter() < end:
            conn = conns[i % len(conns)]
            i += 1
            t0 = time.perf_counter()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise SystemExit(f"fit: HTTP {resp.status}: {data[:200]!r}")
            latencies[k].append(time.perf_counter() - t0)
        for c in conns:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    flat = [x for lat in latencies for x in lat]
    return len(flat), flat


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8, help="clients of the 8-session case")
    parser.add_argument("--hot", type=int, default=16, help="clients on the hot session")
    args = parser.parse_args()
    body = npy(np.random.default_rng(0).normal(0, 1, (args.rows, args.features)).astype("f4"))
    rows: Rows = {}
    with tempfile.TemporaryDirectory(prefix="bnaas-bench-store-") as tmp:
        folder = Path(tmp)
        setups: list[tuple[str, list[str]]] = [("sqlite", [f"sqlite:///{folder / 'b.db'}"])]
        with redis_server(folder) as (rport, rpid):
            url = f"redis://127.0.0.1:{rport}/0"
            setups += [("redis x1", [url]), ("redis x2", [url, url])]
            for name, stores in setups:
                with _replicas(stores, folder, name) as servers:
                    ports = [port for port, _ in servers]
                    # The servers' CPU (and Redis's): on a busy machine, CPU per fit says
                    # more about capacity than fits/s.
                    pids = [pid for _, pid in servers] + ([rpid] if name != "sqlite" else [])
                    cases = {
                        "8 sessions": ([create(ports[0], args.features) for _ in range(8)],
                                       args.clients),
                        "hot": ([create(ports[0], args.features)], args.hot),
                    }  # fmt: skip
                    for case, (sessions, clients) in cases.items():
                        load(ports, sessions, clients, body, 0.5)  # warm-up
                        calls = fcall_writes(rport) if name != "sqlite" else 0
                        cpu = cpu_seconds(pids)
                        n, lat = load(ports, sessions, clients, body, args.seconds)
                        cpu = cpu_seconds(pids) - cpu
                        redis_calls = fcall_writes(rport) - calls if name != "sqlite" else 0
                        retries = (redis_calls - n) / n if name != "sqlite" and n else None
                        p99 = float(np.percentile(lat, 99)) * 1000 if lat else float("nan")
                        rows[(name, case)] = (
                            n / args.seconds,
                            p99,
                            retries,
                            1000 * cpu / max(n, 1),
                        )
    _report(rows, args)


@contextmanager
def _replicas(stores: list[str], folder: Path, name: str) -> Iterator[list[tuple[int, int]]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(bnaas(store, folder / f"{name.replace(' ', '_')}-{i}.log"))
            for i, store in enumerate(stores)
        ]


Rows = dict[tuple[str, str], tuple[float, float, float | None, float]]


def _report(rows: Rows, args: argparse.Namespace) -> None:
    print(f"fits of ({args.rows}, {args.features}) float32 .npy, ?output=false, "
          f"{args.seconds:g} s per case, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'store':<10} {'case':<26} {'fits/s':>9} {'p99 ms':>9} {'retries/commit':>15} "
          f"{'server CPU ms/fit':>18}")  # fmt: skip
    for (name, case), (rate, p99, retries, cpu) in rows.items():
        clients = args.hot if case == "hot" else args.clients
        label = f"{case} ({clients} clients)"
        r = "-" if retries is None else f"{retries:.3f}"
        print(f"{name:<10} {label:<26} {rate:>9.0f} {p99:>9.1f} {r:>15} {cpu:>18.2f}")
    print()
    for case in ("8 sessions", "hot"):
        one, two, lite = (rows[(n, case)][0] for n in ("redis x1", "redis x2", "sqlite"))
        floor = " (floor: 1.3)" if case == "8 sessions" else ""
        print(f"{case}: redis x2 / redis x1 = {two / one:.2f}{floor}; "
              f"redis x1 / sqlite = {one / lite:.2f}")  # fmt: skip
    hot = rows[("redis x2", "hot")][2]
    print(f"hot session, redis x2, {args.hot} clients: retries per commit = {hot:.3f} (floor: < 1)")


if __name__ == "__main__":
    main()
