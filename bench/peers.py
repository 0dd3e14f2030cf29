"""bnaas next to the model servers people would otherwise use, on the same BatchNorm transform.

    python bench/peers.py [--seconds 2] [--large-seconds 4] [--rounds 3] [--clients 4]
                          [--peers kserve,mlserver] [--cache ~/.cache/bnaas-peers]
                          [--python-client] [--bnaas-arg=--flag ...]

The peers are KServe's Python model server (kserve 0.21, a custom ``kserve.Model``) and
MLServer 1.7 (a custom ``MLModel``), model files in bench/peers/. Each runs in its own virtual
environment that this script creates under ``--cache`` (default ~/.cache/bnaas-peers) from the
fully pinned bench/peers/*-requirements.txt (``pip install --no-deps``: exactly those versions,
no torch); a peer that cannot be installed or started is skipped with a message.

bnaas runs through its CLI (SQLite store). One session per width is fitted once; its exported
running statistics become the peers' parameters, so every server computes the same numbers, and
each peer's answer is checked against bnaas's (1e-5) before it is timed. One process each on
127.0.0.1, every case once per round, rounds interleaved; the table shows medians and ranges of
req/s and of the per-round ratios bnaas / peer. Load comes from wrk when installed (see
bench/http.py). Per-request logging is off in the peers (KServe's access and latency logs,
MLServer's debug access log) and MLServer runs inference inline (parallel_workers 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py is imported below; run as a script, this folder must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bench.http import (
    JSON,
    NPY,
    SHAPES,
    Case,
    Server,
    bnaas_server,
    check,
    create_session,
    free_port,
    loader,
    npy,
    request,
    run_rounds,
    spread,
    start_server,
    tag,
    v2_binary,
    v2_json,
)

HERE = Path(__file__).resolve().parent / "peers"
ATOL = RTOL = 1e-5


@dataclass(frozen=True)
class Peer:
    key: str
    title: str
    binary: bool  # has the V2 binary tensor extension on REST
    how: str  # how it runs, for the report's header


PEERS = (
    Peer(
        "kserve",
        "KServe 0.21",
        binary=True,
        how="kserve==0.21.0 ModelServer, 1 worker, gRPC off, access + latency logs off",
    ),
    Peer(
        "mlserver",
        "MLServer 1.7",
        binary=False,
        how="mlserver==1.7.1 start, parallel_workers 0 (inline), debug (access log) off",
    ),
)


def model_name(c: int) -> str:
    return f"bn{c}"


# --- virtual environments ------------------------------------------------------------------


def ensure_venv(peer: Peer, cache: Path) -> Path | None:
    """The peer's interpreter, installing its pinned set once; None (and why) when impossible."""
    requirements = HERE / f"{peer.key}-requirements.txt"
    venv = cache / peer.key
    python = venv / "bin" / "python"
    stamp = venv / ".bnaas-requirements"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing {peer.title} into {venv} (once)...", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(requirements)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"skipping {peer.title}: {' '.join(step[:4])} failed:", file=sys.stderr)
            print(done.stderr[-1500:], file=sys.stderr)
            return None
    probe = "import importlib.util as u; print(u.find_spec('torch') is not None)"
    has_torch = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=False
    ).stdout
    if has_torch.strip() == "True":
        print(f"note: {peer.title}'s environment holds torch", file=sys.stderr)
    stamp.write_text(wanted)
    return python


# --- servers -------------------------------------------------------------------------------


def _peer_env(params: Path) -> dict[str, str]:
    # PYTHONPATH: the model files only; the bnaas checkout must not leak into a peer.
    return {"BNAAS_PEER_PARAMS": str(params), "PYTHONPATH": str(HERE)}


def start_kserve(python: Path, params: Path, widths: Sequence[int], workdir: Path) -> Server:
    port = free_port()
    argv = [
        str(python),
        str(HERE / "kserve_bn.py"),
        "--http_port",
        str(port),
        "--enable_grpc",
        "false",
        "--enable_latency_logging",
        "false",
        "--workers",
        "1",
    ]
    ready = f"/v2/models/{model_name(widths[-1])}/ready"
    return start_server("kserve", argv, port, ready, workdir, _peer_env(params))


def start_mlserver(python: Path, params: Path, widths: Sequence[int], workdir: Path) -> Server:
    port = free_port()
    root = workdir / "mlserver"
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
    }
    for c in widths:
        model = root / model_name(c)
        model.mkdir(parents=True)
        doc = {"name": model_name(c), "implementation": "mlserver_bn.BatchNorm"}
        (model / "model-settings.json").write_text(json.dumps(doc))
    (root / "settings.json").write_text(json.dumps(settings))
    argv = [str(python.parent / "mlserver"), "start", str(root)]
    ready = f"/v2/models/{model_name(widths[-1])}/ready"
    return start_server("mlserver", argv, port, ready, workdir, _peer_env(params))


STARTERS: dict[str, Callable[[Path, Path, Sequence[int], Path], Server]] = {
    "kserve": start_kserve,
    "mlserver": start_mlserver,
}


# --- the same numbers everywhere -----------------------------------------------------------


def fitted_sessions(port: int, rng: np.random.Generator) -> tuple[dict[int, str], dict[str, Any]]:
    """One bnaas session per width, fitted once; their stats keyed by the peers' model names."""
    sessions: dict[int, str] = {}
    params: dict[str, Any] = {}
    for n, c in SHAPES:
        sid = create_session(port, c)
        batch = rng.normal(3.0, 2.0, (n, c)).astype(np.float32)
        status, _, data = request(port, "POST", f"/v1/sessions/{sid}/fit", npy(batch), NPY)
        if status != 200:
            raise RuntimeError(f"fit: HTTP {status}: {data[:300]!r}")
        status, _, data = request(port, "GET", f"/v1/sessions/{sid}/stats")
        if status != 200:
            raise RuntimeError(f"stats: HTTP {status}: {data[:300]!r}")
        stats = orjson.loads(data)
        keys = ("running_mean", "running_var", "weight", "bias", "eps")
        params[model_name(c)] = {k: stats[k] for k in keys}
        sessions[c] = sid
    return sessions, params


def decode_v2(data: bytes, header_length: str | None) -> np.ndarray:
    """The OUTPUT tensor of a V2 answer, JSON or binary."""
    end = int(header_length) if header_length else len(data)
    out = orjson.loads(data[:end])["outputs"][0]
    if header_length:
        return np.frombuffer(data, np.float32, offset=end).reshape(out["shape"])
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def same_numbers(case: Case, expected: np.ndarray) -> str | None:
    """None when the server answers ``expected`` within 1e-5, else what differs."""
    status, headers, data = request(case.port, "POST", case.path, case.body, case.headers)
    if status != 200:
        return f"HTTP {status}: {data[:300]!r}"
    try:
        got = decode_v2(data, headers.get("inference-header-content-length"))
    except (KeyError, ValueError, IndexError) as exc:
        return f"unreadable answer ({exc!r}): {data[:200]!r}"
    if got.shape != expected.shape:
        return f"shape {got.shape}, expected {expected.shape}"
    if not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
        return f"max abs difference {float(np.max(np.abs(got - expected))):.3g}"
    return None


# --- cases and report ----------------------------------------------------------------------

PROTOCOLS = ("V2 JSON", "V2 binary", "npy")


def case_name(server: str, protocol: str, t: str) -> str:
    return f"{server} {protocol} {t}"


def build_cases(
    bnaas: Server, peers: dict[str, Server], sessions: dict[int, str]
) -> tuple[list[Case], dict[str, str]]:
    """Every case, bnaas's answers verified against numpy, peers' against bnaas's; and the
    peers that answered differently (dropped) with the reason."""
    rng = np.random.default_rng(1)
    cases: list[Case] = []
    dropped: dict[str, str] = {}
    for shape in SHAPES:
        x = rng.normal(3.0, 2.0, shape).astype(np.float32)
        t, c = tag(shape), shape[1]
        binary, binary_h = v2_binary(x)
        bodies = {"V2 JSON": (v2_json(x), JSON), "V2 binary": (binary, binary_h)}
        path = f"/v1/sessions/{sessions[c]}/transform"
        reference = Case(case_name("bnaas", "npy", t), bnaas.port, path, npy(x), NPY)
        expected = np.load(io.BytesIO(check(reference)))
        cases.append(reference)
        for protocol, (body, headers) in bodies.items():
            v2 = Case(
                case_name("bnaas", protocol, t),
                bnaas.port,
                f"/v2/models/{sessions[c]}/infer",
                body,
                headers,
            )
            if (why := same_numbers(v2, expected)) is not None:
                raise RuntimeError(f"bnaas {protocol} {t} disagrees with its npy route: {why}")
            cases.append(v2)
            for peer in PEERS:
                server = peers.get(peer.key)
                if server is None or peer.key in dropped:
                    continue
                if protocol == "V2 binary" and not peer.binary:
                    continue
                case = Case(
                    case_name(peer.key, protocol, t),
                    server.port,
                    f"/v2/models/{model_name(c)}/infer",
                    body,
                    headers,
                )
                if (why := same_numbers(case, expected)) is not None:
                    dropped[peer.key] = f"{protocol} {t}: {why}"
                    continue
                cases.append(case)
    return [c for c in cases if c.name.split()[0] not in dropped], dropped


def _ratio(num: Sequence[float], den: Sequence[float]) -> str:
    """Median and range of the per-round ratios; a round where either side completed no
    request within its window gives no ratio."""
    ratios = [a / b for a, b in zip(num, den, strict=True) if a > 0 and b > 0]
    if not ratios:
        return "-"
    med, rng = spread(ratios, "{:.2f}")
    return f"{med}x [{rng}]"


def _fastest(rps: dict[str, list[float]], peer: str, t: str) -> list[float] | None:
    """The peer's fastest protocol at this shape (by median), or None when it ran none."""
    offered = [v for p in PROTOCOLS if (v := rps.get(case_name(peer, p, t))) is not None]
    return max(offered, key=statistics.median, default=None)


def report(rps: dict[str, list[float]], active: Sequence[Peer], notes: dict[str, str]) -> None:
    head = f"{'shape':9} {'protocol':10} {'bnaas req/s':>24}"
    for peer in active:
        head += f" {peer.title + ' req/s':>26} {'bnaas/' + peer.key:>23}"
    print(head)
    for shape in SHAPES:
        t = tag(shape)
        for protocol in PROTOCOLS:
            ours = rps[case_name("bnaas", protocol, t)]
            med, rng = spread(ours)
            line = f"{t:9} {protocol:10} {med + ' [' + rng + ']':>24}"
            for peer in active:
                theirs = rps.get(case_name(peer.key, protocol, t))
                if theirs is None:
                    gap = "no npy route" if protocol == "npy" else "no binary REST"
                    best = _fastest(rps, peer.key, t)
                    vs = "-" if best is None else _ratio(ours, best) + "*"
                    line += f" {gap:>26} {vs:>23}"
                    continue
                med, rng = spread(theirs)
                line += f" {med + ' [' + rng + ']':>26} {_ratio(ours, theirs):>23}"
            print(line)
    print("ratios: median [min-max] of per-round bnaas/peer;")
    print("* against the peer's fastest protocol at that shape (it has no such route)")
    for text in notes.values():
        print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per case per round")
    parser.add_argument("--large-seconds", type=float, default=4.0, help="bodies over 1 MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--python-client", action="store_true", help="do not use wrk")
    parser.add_argument("--peers", default="kserve,mlserver", help="comma-separated subset")
    parser.add_argument(
        "--bnaas-arg", action="append", default=[], help="extra flag for bnaas serve (repeat)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bnaas-peers",
        help="where the peers' virtual environments live",
    )
    args = parser.parse_args()
    wanted = [p for p in PEERS if p.key in args.peers.split(",")]
    pythons = {p.key: py for p in wanted if (py := ensure_venv(p, args.cache)) is not None}
    workdir = Path(tempfile.mkdtemp(prefix="bnaas-bench-peers-"))
    servers: list[Server] = []
    notes: dict[str, str] = {}
    try:
        bnaas, access_note = bnaas_server(workdir, args.bnaas_arg)
        servers.append(bnaas)
        sessions, params = fitted_sessions(bnaas.port, np.random.default_rng(0))
        params_file = workdir / "params.json"
        params_file.write_text(json.dumps(params))
        peers: dict[str, Server] = {}
        for key, python in pythons.items():
            try:
                peers[key] = STARTERS[key](python, params_file, list(sessions), workdir)
                servers.append(peers[key])
            except RuntimeError as exc:
                notes[key] = f"{key} skipped: {exc}"
        cases, dropped = build_cases(bnaas, peers, sessions)
        for key, why in dropped.items():
            notes[key] = f"{key} skipped: its answer differs from bnaas's ({why})"
        load, how = loader(args.clients, workdir, args.python_client)
        print(f"bnaas: python -m service.cli serve, SQLite store, 1 worker; {access_note}")
        for peer in wanted:
            if peer.key in peers:
                print(f"{peer.title}: {peer.how}")
        for peer in wanted:
            if peer.key not in pythons:
                notes.setdefault(peer.key, f"{peer.key} skipped: could not be installed")
        print(
            f"{how}; {args.rounds} rounds x {args.seconds:g} s per case"
            f" ({args.large_seconds:g} s for bodies over 1 MiB), interleaved"
        )
        print("every timed peer answered the same numbers as bnaas (rtol = atol = 1e-5)\n")
        rps = run_rounds(cases, load, args.seconds, args.rounds, args.large_seconds)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    active = [p for p in wanted if any(n.startswith(p.key + " ") for n in rps)]
    report(rps, active, notes)
    if any(min(v) == 0 for v in rps.values()):
        print("a case completed no request in some round: raise --large-seconds")


if __name__ == "__main__":
    main()
