"""HTTP throughput of bnaas next to an external bare echo app, measured in the same run.

    python bench/http.py [--seconds 2] [--large-seconds 4] [--rounds 3] [--clients 4]
                         [--python-client] [--bnaas-arg=--flag ...]

Starts two processes on 127.0.0.1: bnaas the way a user runs it (``python -m service.cli serve``,
SQLite store in a temporary folder) and ``bench/bare_echo.py`` under uvicorn with its access log
off. Every case runs once per round, rounds interleaved (this machine's load drifts: each round
exposes every case to the same drift), and the table shows the median and the range over rounds.
Ratios are taken per round (numerator and denominator measured minutes apart at most) and printed
as median and range next to issue 10's floors. Nothing here asserts: it prints.

Load comes from ``wrk -t1 -cN`` when wrk is installed (one light thread: the server gets the
cores; ``apt-get install wrk``), else from N Python client processes (heavier: they compete
with the server for the CPU, so absolute numbers drop; ratios still compare like with like).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: run as a script, its folder must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import http.client
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ((32, 64), (4096, 256))
NPY = {"content-type": "application/x-npy"}
JSON = {"content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process on 127.0.0.1 that this script started (and stops, by its PID)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(
    name: str,
    argv: Sequence[str],
    port: int,
    ready_path: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Server:
    """Start ``argv`` (output to a log file) and wait until ``GET ready_path`` answers 200."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    server = Server(name, port, proc, log)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            break
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", ready_path)
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{name} did not become ready on port {port}:\n{tail}")


def bnaas_server(workdir: Path, extra: Sequence[str] = ()) -> tuple[Server, str]:
    """bnaas through its CLI, as deployed; returns the server and a note on its access log.

    Only flags every version of the CLI accepts are passed, so the same script measures the
    code before and after the access-log change; ``extra`` adds any other flag."""
    help_text = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout
    if "access-log" in help_text:
        note = "access log: the CLI's default (the CLI has an access-log flag; off by default)"
    else:
        note = "access log: ON (uvicorn's default; this CLI has no flag to turn it off)"
    if extra:
        note += f"; extra flags: {' '.join(extra)}"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--store",
        f"sqlite:///{workdir}/bench.db",
        "--device",
        "cpu",
        *extra,
    ]
    return start_server("bnaas", argv, port, "/readyz", workdir), note


def echo_server(workdir: Path) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare_echo:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return start_server("bare-echo", argv, port, "/readyz", workdir)


# --- requests and load ---------------------------------------------------------------------


@dataclass
class Case:
    """One measured request: POST ``path`` with ``body`` to a server, again and again."""

    name: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str]
    response_bytes: int = field(default=0)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check(case: Case) -> bytes:
    """One request before timing: a case that fails is a broken benchmark, not a slow one."""
    status, _, data = request(case.port, "POST", case.path, case.body, case.headers)
    if status != 200:
        raise RuntimeError(f"{case.name}: HTTP {status}: {data[:300]!r}")
    case.response_bytes = len(data)
    return data


def _lua(case: Case, workdir: Path) -> Path:
    body = workdir / f"body-{abs(hash(case.name))}.bin"
    body.write_bytes(case.body)
    lines = [
        f"local f = assert(io.open({json.dumps(str(body))}, 'rb'))",
        "wrk.method = 'POST'",
        "wrk.body = f:read('*a')",
        "f:close()",
    ]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in case.headers.items()]
    script = body.with_suffix(".lua")
    script.write_text("\n".join(lines) + "\n")
    return script


def wrk_load(case: Case, seconds: float, clients: int, workdir: Path) -> float:
    """Requests/s from ``wrk -t1``; raises when any response was not 2xx or timed out."""
    script = _lua(case, workdir)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "60s",
            "-s",
            str(script),
            f"http://127.0.0.1:{case.port}{case.path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"{case.name}: {m.group(1)} non-2xx responses under load")
    if (m := re.search(r"Socket errors: .*timeout (\d+)", out)) and int(m.group(1)):
        raise RuntimeError(f"{case.name}: {m.group(1)} requests timed out under load")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"{case.name}: no Requests/sec in wrk's output:\n{out}")
    return float(m.group(1))


def _client(case: Case, seconds: float, out: mp.Queue[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", case.port)
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        conn.request("POST", case.path, case.body, case.headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"{case.name}: HTTP {resp.status}: {data[:200]!r}")
        n += 1
    out.put(n)


def python_load(case: Case, seconds: float, clients: int) -> float:
    """Requests/s from ``clients`` processes, each with one keep-alive connection."""
    q: mp.Queue[int] = mp.Queue()
    procs = [mp.Process(target=_client, args=(case, seconds, q)) for _ in range(clients)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    counts = [q.get() for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a client for {case.name} failed")
    return sum(counts) / max(elapsed, seconds)


Loader = Callable[[Case, float], float]


def loader(clients: int, workdir: Path, python_client: bool) -> tuple[Loader, str]:
    """The load generator and a line saying which one it is."""
    if not python_client and shutil.which("wrk"):
        return (
            lambda case, s: wrk_load(case, s, clients, workdir),
            f"load: wrk -t1 -c{clients} (one connection per client, keep-alive)",
        )
    why = "asked for" if python_client else "wrk not installed"
    return (
        lambda case, s: python_load(case, s, clients),
        f"load: {clients} Python client processes ({why}; heavier than wrk)",
    )


LARGE_BODY = 1 << 20


def run_rounds(
    cases: Sequence[Case], load: Loader, seconds: float, rounds: int, large_seconds: float
) -> dict[str, list[float]]:
    """Requests/s of every case in every round; rounds interleaved, a short warm-up first.
    Bodies over 1 MiB run ``large_seconds``: at a few requests/s a short window counts too few."""
    for case in cases:
        check(case)
        load(case, 1.0)
    rps: dict[str, list[float]] = {c.name: [] for c in cases}
    for r in range(rounds):
        t0 = time.monotonic()
        for case in cases:
            window = large_seconds if len(case.body) > LARGE_BODY else seconds
            rps[case.name].append(load(case, window))
        print(f"  round {r + 1}/{rounds}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return rps


# --- bodies --------------------------------------------------------------------------------


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def v2_json(a: np.ndarray) -> bytes:
    doc = {
        "inputs": [
            {"name": "INPUT", "shape": list(a.shape), "datatype": "FP32", "data": a.reshape(-1)}
        ]
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def v2_binary(a: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A V2 request with the tensor as binary data and the answer asked as binary too."""
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "shape": list(a.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": a.nbytes},
                }
            ],
            "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": True}}],
            "parameters": {"binary_data_output": True},
        }
    )
    headers = {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + a.astype("<f4").tobytes(), headers


def create_session(port: int, c: int) -> str:
    status, _, data = request(port, "POST", "/v1/sessions", orjson.dumps({"num_features": c}), JSON)
    if status not in (200, 201):
        raise RuntimeError(f"create session: HTTP {status}: {data[:300]!r}")
    return str(orjson.loads(data)["id"])


def tag(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _cases(bnaas: int, echo: int) -> list[Case]:
    rng = np.random.default_rng(0)
    cases: list[Case] = []
    for shape in SHAPES:
        x = rng.normal(0, 1, shape).astype(np.float32)
        sid, t = create_session(bnaas, shape[1]), tag(shape)
        body_npy = npy(x)
        body_json = orjson.dumps({"data": x}, option=orjson.OPT_SERIALIZE_NUMPY)
        v2, v2_h = v2_binary(x)
        cases += [
            Case(f"echo npy {t}", echo, "/echo/npy", body_npy, NPY),
            Case(f"transform npy {t}", bnaas, f"/v1/sessions/{sid}/transform", body_npy, NPY),
            Case(f"fit npy {t}", bnaas, f"/v1/sessions/{sid}/fit", body_npy, NPY),
            Case(f"echo json {t}", echo, "/echo/json", body_json, JSON),
            Case(f"transform json {t}", bnaas, f"/v1/sessions/{sid}/transform", body_json, JSON),
            Case(f"echo v2 binary {t}", echo, "/v2/models/echo/infer", v2, v2_h),
            Case(f"v2 binary transform {t}", bnaas, f"/v2/models/{sid}/infer", v2, v2_h),
        ]
    return cases


# --- report --------------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str = "{:.1f}") -> tuple[str, str]:
    """The median and the 'min-max' range of one case's rounds."""
    return fmt.format(
        statistics.median(values)
    ), f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def per_round(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Ratios of the same round's measurements (rounds are interleaved: same drift); a round
    where either side completed no request within its window gives none."""
    return [a / b for a, b in zip(num, den, strict=True) if a > 0 and b > 0]


def print_rates(cases: Sequence[Case], rps: dict[str, list[float]]) -> None:
    print(f"{'case':28} {'req/s median':>12} {'min-max':>17} {'MB/s median':>12}")
    for case in cases:
        values = rps[case.name]
        mbs = statistics.median(values) * (len(case.body) + case.response_bytes) / 1e6
        med, rng = spread(values)
        print(f"{case.name:28} {med:>12} {rng:>17} {mbs:12.1f}")


FLOORS = (  # (label, numerator case, denominator case, issue 10's floor)
    ("npy transform / bare npy echo, 32x64", "transform npy 32x64", "echo npy 32x64", 0.85),
    ("npy transform / bare npy echo, 4096x256", "transform npy 4096x256", "echo npy 4096x256", 1.0),
    ("JSON transform / orjson echo, 32x64", "transform json 32x64", "echo json 32x64", 0.7),
    (
        "JSON transform / orjson echo, 4096x256",
        "transform json 4096x256",
        "echo json 4096x256",
        0.7,
    ),
    ("V2 binary / bare V2 echo, 32x64", "v2 binary transform 32x64", "echo v2 binary 32x64", 0.85),
    (
        "V2 binary / bare V2 echo, 4096x256",
        "v2 binary transform 4096x256",
        "echo v2 binary 4096x256",
        0.0,
    ),
    ("fit (SQLite) / transform, npy 32x64", "fit npy 32x64", "transform npy 32x64", 0.75),
    ("fit (SQLite) / transform, npy 4096x256", "fit npy 4096x256", "transform npy 4096x256", 0.0),
)


def print_ratios(rps: dict[str, list[float]]) -> None:
    print(f"\n{'ratio (per round)':42} {'median':>7} {'min-max':>11} {'floor':>6}")
    for label, num, den, floor in FLOORS:
        ratios = per_round(rps[num], rps[den])
        if not ratios:
            print(f"{label:42} {'-':>7}")
            continue
        verdict = "" if not floor else "ok" if statistics.median(ratios) >= floor else "BELOW"
        shown = f"{floor:.2f}" if floor else "-"
        med, rng = spread(ratios, "{:.2f}")
        print(f"{label:42} {med:>7} {rng:>11} {shown:>6} {verdict}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per case per round")
    parser.add_argument("--large-seconds", type=float, default=4.0, help="bodies over 1 MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--python-client", action="store_true", help="do not use wrk")
    parser.add_argument(
        "--bnaas-arg", action="append", default=[], help="extra flag for bnaas serve (repeat)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bnaas-bench-http-"))
    servers: list[Server] = []
    try:
        bnaas, note = bnaas_server(workdir, args.bnaas_arg)
        servers.append(bnaas)
        servers.append(echo_server(workdir))
        load, how = loader(args.clients, workdir, args.python_client)
        print(f"bnaas: python -m service.cli serve, SQLite store, 1 worker; {note}")
        print("reference: bench/bare_echo.py under uvicorn, access log off, 1 worker")
        print(
            f"{how}; {args.rounds} rounds x {args.seconds:g} s per case"
            f" ({args.large_seconds:g} s for bodies over 1 MiB), interleaved\n"
        )
        cases = _cases(bnaas.port, servers[1].port)
        rps = run_rounds(cases, load, args.seconds, args.rounds, args.large_seconds)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_rates(cases, rps)
    print_ratios(rps)


if __name__ == "__main__":
    main()
