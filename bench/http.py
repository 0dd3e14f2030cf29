"""HTTP throughput of bnaas next to a bare echo route on the same server, same run.

    python bench/http.py [--seconds 10] [--clients 2] [--rounds 5] [--servers bnaas,httptools]

Starts ``bench.echo_app:app`` (the service app plus echo routes; SQLite store in a temporary
folder) the way ``bnaas serve`` runs it (its HTTP edge: service/server.py), drives it from
client processes with keep-alive connections, and prints requests/s, MB/s (request + response
bytes) and the ratios the issues set floors on. ``--servers`` also starts the same app on
stock uvicorn (``httptools``, ``h11``; access log off) and interleaves every case over all of
them, so the edge's own cost shows as a ratio measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: run as a script, its folder must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import http.client
import io
import multiprocessing as mp
import os
import socket
import subprocess
import tempfile
import time

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(
    port: int, path: str, body: bytes, headers: dict[str, str], seconds: float, out: mp.Queue
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    n, nbytes = 0, 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"{path}: HTTP {resp.status}: {data[:200]!r}")
        n += 1
        nbytes += len(body) + len(data)
    out.put((n, nbytes))


def load(
    port: int, path: str, body: bytes, headers: dict[str, str], seconds: float, clients: int
) -> tuple[float, float]:
    """Requests/s and MB/s with ``clients`` processes hammering one route."""
    q: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=_client, args=(port, path, body, headers, seconds, q))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"client for {path} failed")
    n = sum(r[0] for r in results)
    return n / seconds, sum(r[1] for r in results) / seconds / 1e6


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def v2_binary(a: np.ndarray) -> tuple[bytes, int]:
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
            "parameters": {"binary_data_output": True},
        }
    )
    return head + a.tobytes(), len(head)


# How each --servers entry is started: the same app, the same store kind, access log off.
SERVERS = ("bnaas", "httptools", "h11")


def _command(server: str, port: int) -> list[str]:
    if server == "bnaas":
        return [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--app",
            "bench.echo_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.echo_app:app",
        "--factory",
        "--http",
        server,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="per case, all rounds")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--servers", default="bnaas", help=f"comma-separated, from {', '.join(SERVERS)}"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if not names or any(n not in SERVERS for n in names):
        parser.error(f"--servers takes names from {', '.join(SERVERS)}")
    tmp = tempfile.mkdtemp(prefix="bnaas-bench-")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for name in names:
            ports[name] = free_port()
            env = {
                **os.environ,
                "BNAAS_STORE": f"sqlite:///{tmp}/{name}.db",
                "BNAAS_DEVICE": "cpu",
                "PYTHONPATH": str(ROOT),
            }
            procs[name] = subprocess.Popen(_command(name, ports[name]), env=env, cwd=ROOT)
        for port in ports.values():
            _wait(port)
        servers = {name: (ports[name], procs[name].pid) for name in names}
        rows, cpu = _run(servers, args.seconds, args.clients, args.rounds)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
    for name in names:
        if len(names) > 1:
            print(f"== {name}")
        _report(rows[name])
    if len(names) > 1:
        _compare(rows, cpu, names)


def _wait(port: int) -> None:
    for _ in range(300):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def _create(port: int, c: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request(
        "POST",
        "/v1/sessions",
        orjson.dumps({"num_features": c}),
        {"content-type": "application/json"},
    )
    return str(orjson.loads(conn.getresponse().read())["id"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Rows = dict[str, dict[str, tuple[float, float]]]


def _run(
    servers: dict[str, tuple[int, int]], seconds: float, clients: int, rounds: int
) -> tuple[Rows, dict[str, dict[str, float]]]:
    """Every case on every server (name -> (port, pid)) once per round, rounds interleaved;
    the best round of each counts (this machine's load drifts: interleaving exposes every case
    to the same drift). Also the server's CPU microseconds per request (lowest round), which
    a loaded machine disturbs far less than requests/s."""
    cases = {name: _cases(port) for name, (port, _) in servers.items()}
    rows: Rows = {name: {} for name in servers}
    cpu: dict[str, dict[str, float]] = {name: {} for name in servers}
    for _ in range(rounds):
        for case in cases[next(iter(servers))]:
            for name, (port, pid) in servers.items():
                path, body, headers = cases[name][case]
                before = _cpu_seconds(pid)
                rps, mbs = load(port, path, body, headers, seconds / rounds, clients)
                us = (_cpu_seconds(pid) - before) / max(rps * seconds / rounds, 1) * 1e6
                if rps > rows[name].get(case, (0.0, 0.0))[0]:
                    rows[name][case] = (rps, mbs)
                cpu[name][case] = min(cpu[name].get(case, us), us)
    return rows, cpu


def _cases(port: int) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    cases: dict[str, tuple[str, bytes, dict[str, str]]] = {}
    rng = np.random.default_rng(0)
    npy_h = {"content-type": "application/x-npy"}
    json_h = {"content-type": "application/json"}
    for shape in ((32, 64), (4096, 256)):
        x = rng.normal(0, 1, shape).astype(np.float32)
        sid = _create(port, shape[1])
        tag = f"{shape[0]}x{shape[1]}"
        body_npy, body_json = npy(x), orjson.dumps({"data": x}, option=orjson.OPT_SERIALIZE_NUMPY)
        cases[f"echo npy {tag}"] = ("/bench/echo", body_npy, npy_h)
        cases[f"transform npy {tag}"] = (f"/v1/sessions/{sid}/transform", body_npy, npy_h)
        cases[f"fit npy {tag}"] = (f"/v1/sessions/{sid}/fit", body_npy, npy_h)
        cases[f"echo json {tag}"] = ("/bench/echo-json", body_json, json_h)
        cases[f"transform json {tag}"] = (f"/v1/sessions/{sid}/transform", body_json, json_h)
        cases[f"fit json {tag}"] = (f"/v1/sessions/{sid}/fit", body_json, json_h)
        v2, hlen = v2_binary(x)
        v2_headers = {"Inference-Header-Content-Length": str(hlen)}
        cases[f"v2 binary transform {tag}"] = (f"/v2/models/{sid}/infer", v2, v2_headers)
    return cases


def _report(rows: dict[str, tuple[float, float]]) -> None:
    print(f"{'route':32} {'req/s':>10} {'MB/s':>10}")
    for name, (rps, mbs) in rows.items():
        print(f"{name:32} {rps:10.1f} {mbs:10.1f}")
    print()
    checks = []
    for tag in ("32x64", "4096x256"):
        checks += [
            (
                f"npy transform / echo, {tag}",
                rows[f"transform npy {tag}"][0] / rows[f"echo npy {tag}"][0],
                0.6,
            ),
            (
                f"JSON transform / orjson echo, {tag}",
                rows[f"transform json {tag}"][0] / rows[f"echo json {tag}"][0],
                0.5,
            ),
        ]
    checks.append(
        (
            "fit (SQLite) / transform, npy 32x64",
            rows["fit npy 32x64"][0] / rows["transform npy 32x64"][0],
            0.5,
        )
    )
    checks.append(
        (
            "V2 binary / npy transform, 4096x256",
            rows["v2 binary transform 4096x256"][0] / rows["transform npy 4096x256"][0],
            0.9,
        )
    )
    print(f"{'ratio':42} {'value':>7} {'floor':>6}")
    for name, value, floor in checks:
        print(f"{name:42} {value:7.2f} {floor:6.2f} {'ok' if value >= floor else 'BELOW'}")


def _compare(rows: Rows, cpu: dict[str, dict[str, float]], names: list[str]) -> None:
    base, others = names[0], names[1:]
    print(f"== {base} against the others, same run: req/s ratio; server CPU us per request")
    print(
        f"{'route':32} "
        + " ".join(f"{'/ ' + n:>12}" for n in others)
        + " ".join(f"{'CPU ' + n:>15}" for n in names)
    )
    for case, (rps, _) in rows[base].items():
        ratios = " ".join(f"{rps / rows[n][case][0]:12.2f}" for n in others)
        cpus = " ".join(f"{cpu[n][case]:15.0f}" for n in names)
        print(f"{case:32} {ratios}{cpus}")


if __name__ == "__main__":
    main()
