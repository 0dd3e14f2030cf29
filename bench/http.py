"""HTTP throughput of bnaas next to an external bare echo app, measured in the same run.

    python bench/http.py [--seconds 2] [--large-seconds 4] [--rounds 3] [--clients 4]
                         [--python-client] [--bnaas-arg=--flag ...] [--baseline TREE]
                         [--cases REGEX]

Starts two processes on 127.0.0.1: bnaas the way a user runs it (``python -m service.cli serve``,
SQLite store in a temporary folder) and ``bench/bare_echo.py`` under uvicorn with its access log
off. Every case runs once per round, rounds interleaved (this machine's load drifts: each round
exposes every case to the same drift), and the table shows the median and the range over rounds.
Ratios are taken per round (numerator and denominator measured minutes apart at most) and printed
as median and range next to issue 10's floors. Nothing here asserts: it prints.

Next to requests/s, every case shows the server's CPU time per request (user + system, from
/proc/PID/stat over the window): on a shared machine it drifts far less than requests/s do.
``--baseline TREE`` starts a second bnaas from another checkout of the repository (its own
``service`` package, this interpreter) and measures its cases in the same rounds, so a change
is compared with what it replaces under the same load: ``git worktree add /tmp/old main``.
``--cases "json 32x64|echo json"`` measures only the cases whose name the regex finds.

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
    tree: Path = ROOT,
) -> Server:
    """Start ``argv`` (output to a log file) and wait until ``GET ready_path`` answers 200."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), **(env or {})},
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


def bnaas_server(
    workdir: Path, extra: Sequence[str] = (), tree: Path = ROOT, name: str = "bnaas"
) -> tuple[Server, str]:
    """bnaas through its CLI, as deployed; returns the server and a note on its access log.

    Only flags every version of the CLI accepts are passed, so the same script measures the
    code before and after the access-log change; ``extra`` adds any other flag."""
    help_text = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
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
        f"sqlite:///{workdir}/{name}.db",
        "--device",
        "cpu",
        *extra,
    ]
    return start_server(name, argv, port, "/readyz", workdir, tree=tree), note


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
    pid: int = field(default=0)  # the server's, for its CPU time


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


def wrk_load(case: Case, seconds: float, clients: int, workdir: Path) -> tuple[float, int]:
    """Requests/s and requests from ``wrk -t1``; raises when any response was not 2xx or
    timed out."""
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
    n = re.search(r"(\d+) requests in", out)
    if m is None or n is None:
        raise RuntimeError(f"{case.name}: no Requests/sec in wrk's output:\n{out}")
    return float(m.group(1)), int(n.group(1))


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


def python_load(case: Case, seconds: float, clients: int) -> tuple[float, int]:
    """Requests/s and requests from ``clients`` processes, each with one keep-alive
    connection."""
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
    return sum(counts) / max(elapsed, seconds), sum(counts)


Loader = Callable[[Case, float], tuple[float, int]]


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


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def server_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used; NaN where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Results:
    """Per case, one value per round: requests/s and the server's CPU microseconds per request."""

    rps: dict[str, list[float]]
    cpu_us: dict[str, list[float]]


def run_rounds(
    cases: Sequence[Case], load: Loader, seconds: float, rounds: int, large_seconds: float
) -> dict[str, list[float]]:
    """Requests/s of every case in every round (``measure_rounds``)."""
    return measure_rounds(cases, load, seconds, rounds, large_seconds).rps


def measure_rounds(
    cases: Sequence[Case], load: Loader, seconds: float, rounds: int, large_seconds: float
) -> Results:
    """Every case in every round; rounds interleaved, a short warm-up first. Bodies over
    1 MiB run ``large_seconds``: at a few requests/s a short window counts too few."""
    for case in cases:
        check(case)
        load(case, 1.0)
    out = Results({c.name: [] for c in cases}, {c.name: [] for c in cases})
    for r in range(rounds):
        t0 = time.monotonic()
        for case in cases:
            window = large_seconds if len(case.body) > LARGE_BODY else seconds
            before = server_cpu(case.pid)
            rate, requests = load(case, window)
            used = server_cpu(case.pid) - before
            out.rps[case.name].append(rate)
            out.cpu_us[case.name].append(used / requests * 1e6 if requests else float("nan"))
        print(f"  round {r + 1}/{rounds}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return out


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


BASELINE = " @baseline"


def _cases(bnaas: Server, echo: Server, baseline: Server | None = None) -> list[Case]:
    """Every case, each with the PID of the server it loads; a baseline server gets the same
    bnaas cases, named with ``BASELINE`` appended."""
    rng = np.random.default_rng(0)
    cases: list[Case] = []
    for shape in SHAPES:
        x = rng.normal(0, 1, shape).astype(np.float32)
        t = tag(shape)
        body_npy = npy(x)
        body_json = orjson.dumps({"data": x}, option=orjson.OPT_SERIALIZE_NUMPY)
        v2, v2_h = v2_binary(x)
        e = echo.port, echo.proc.pid
        cases += [
            Case(f"echo npy {t}", e[0], "/echo/npy", body_npy, NPY, pid=e[1]),
            Case(f"echo json {t}", e[0], "/echo/json", body_json, JSON, pid=e[1]),
            Case(f"echo v2 binary {t}", e[0], "/v2/models/echo/infer", v2, v2_h, pid=e[1]),
        ]
        for server, suffix in ((bnaas, ""), (baseline, BASELINE)):
            if server is None:
                continue
            sid, port, pid = create_session(server.port, shape[1]), server.port, server.proc.pid
            session, v2_path = f"/v1/sessions/{sid}", f"/v2/models/{sid}/infer"
            cases += [
                Case(f"transform npy {t}{suffix}", port, f"{session}/transform", body_npy, NPY),
                Case(f"fit npy {t}{suffix}", port, f"{session}/fit", body_npy, NPY),
                Case(f"transform json {t}{suffix}", port, f"{session}/transform", body_json, JSON),
                Case(f"v2 binary transform {t}{suffix}", port, v2_path, v2, v2_h),
            ]
            for case in cases[-4:]:
                case.pid = pid
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


def print_rates(cases: Sequence[Case], results: Results) -> None:
    head = f"{'req/s':>8} {'min-max':>15} {'cpu us/req':>10} {'min-max':>15} {'MB/s':>7}"
    print(f"{'case':38} {head}")
    for case in cases:
        rps, cpu = results.rps[case.name], results.cpu_us[case.name]
        mbs = statistics.median(rps) * (len(case.body) + case.response_bytes) / 1e6
        (med, rng), (cmed, crng) = spread(rps, "{:.0f}"), spread(cpu, "{:.0f}")
        print(f"{case.name:38} {med:>8} {rng:>15} {cmed:>10} {crng:>15} {mbs:7.1f}")


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


def print_ratios(results: Results) -> None:
    """Issue 10's ratios, by requests/s (what the floors name) and by CPU per request (the
    reference's CPU per request over bnaas's: steadier on a shared machine); then, with a
    baseline, each bnaas case against it."""
    head = f"{'req/s':>6} {'min-max':>11} {'cpu':>6} {'min-max':>11}"
    print(f"\n{'ratio (per round)':42} {head} floor")
    for label, num, den, floor in FLOORS:
        if num not in results.rps or den not in results.rps:
            continue
        ratios = per_round(results.rps[num], results.rps[den])
        by_cpu = per_round(results.cpu_us[den], results.cpu_us[num])
        if not ratios:
            print(f"{label:42} {'-':>6}")
            continue
        verdict = "" if not floor else "ok" if statistics.median(ratios) >= floor else "BELOW"
        shown = f"{floor:.2f}" if floor else "-"
        (med, rng), (cmed, crng) = spread(ratios, "{:.2f}"), spread(by_cpu or [0.0], "{:.2f}")
        print(f"{label:42} {med:>6} {rng:>11} {cmed:>6} {crng:>11} {shown:>5} {verdict}".rstrip())
    old = [name for name in results.rps if name.endswith(BASELINE)]
    if old:
        print(f"\n{'this tree / baseline (per round)':42} {'req/s':>6} {'min-max':>11} {'cpu':>6}")
        for name in old:
            new = name.removesuffix(BASELINE)
            ratios = per_round(results.rps[new], results.rps[name])
            by_cpu = per_round(results.cpu_us[name], results.cpu_us[new])
            (med, rng), (cmed, crng) = spread(ratios, "{:.2f}"), spread(by_cpu, "{:.2f}")
            print(f"{new:42} {med:>6} {rng:>11} {cmed:>6} {crng:>11}")


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
    parser.add_argument(
        "--baseline", type=Path, help="another checkout of bnaas, measured in the same rounds"
    )
    parser.add_argument(
        "--cases",
        type=re.compile,
        help="only the cases whose name this regex finds (e.g. 'npy|v2'; ratios need both sides)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bnaas-bench-http-"))
    servers: list[Server] = []
    try:
        bnaas, note = bnaas_server(workdir, args.bnaas_arg)
        servers.append(bnaas)
        echo = echo_server(workdir)
        servers.append(echo)
        baseline = None
        if args.baseline is not None:
            tree = args.baseline.resolve()
            baseline, _ = bnaas_server(workdir, args.bnaas_arg, tree=tree, name="baseline")
            servers.append(baseline)
        load, how = loader(args.clients, workdir, args.python_client)
        print(f"bnaas: python -m service.cli serve, SQLite store, 1 worker; {note}")
        if baseline is not None:
            print(f"baseline: the same from {args.baseline.resolve()} (cases '...{BASELINE}')")
        print("reference: bench/bare_echo.py under uvicorn, access log off, 1 worker")
        print(
            f"{how}; {args.rounds} rounds x {args.seconds:g} s per case"
            f" ({args.large_seconds:g} s for bodies over 1 MiB), interleaved\n"
        )
        cases = _cases(bnaas, echo, baseline)
        if args.cases is not None:
            cases = [case for case in cases if args.cases.search(case.name)]
        results = measure_rounds(cases, load, args.seconds, args.rounds, args.large_seconds)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_rates(cases, results)
    print_ratios(results)


if __name__ == "__main__":
    main()
