"""Event-loop CPU per request of the hot routes, in-process (no HTTP), fit against transform.

    python bench/loop_cpu.py [--rounds 3] [--requests 4000] [--clients 4]

One process per case and round (rounds interleaved): the app from ``service.app.create_app``
under uvloop, ``--clients`` concurrent ASGI callers on one session posting a 32x64 float32
.npy (Accept .npy). Prints, per case, requests/s, the loop thread's CPU time per request and
the whole process's (the SQLite group commit's thread included), and rows per batch for
SQLite; then fit/transform by loop CPU. HTTP adds about the same cost to every request (see
bench/http.py): this isolates what the routes and the store do on the loop, the resource a
fit's rate is bound by (issue 10).

Cases: transform and fit on the memory store, fit on SQLite (a temporary file, synchronous=
FULL as served).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds http.py: run as a script, it must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import io
import json
import resource
import statistics
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CASES = ("transform memory", "fit memory", "fit sqlite")
Message = dict[str, Any]


def _body() -> bytes:
    x = np.random.default_rng(0).normal(0, 1, (32, 64)).astype(np.float32)
    out = io.BytesIO()
    np.save(out, x)
    return out.getvalue()


async def _call(app: Any, path: str, body: bytes, headers: dict[str, str]) -> list[Message]:
    """One request through the ASGI app; its sent messages (status checked)."""
    sent: list[Message] = []
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # never: the routes read one body
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)
    if sent[0]["status"] not in (200, 201):
        raise RuntimeError(f"{path}: HTTP {sent[0]['status']}: {sent[1].get('body', b'')[:200]!r}")
    return sent


async def _measure(case: str, requests: int, clients: int, directory: str) -> dict[str, float]:
    from service.app import create_app
    from service.settings import Settings

    route, store = case.split()
    url = "memory://" if store == "memory" else f"sqlite:///{directory}/bench.db"
    app = create_app(Settings(store=url, device="cpu"))
    async with app.router.lifespan_context(app):
        created = await _call(
            app, "/v1/sessions", b'{"num_features": 64}', {"content-type": "application/json"}
        )
        sid = json.loads(created[1]["body"])["id"]
        body = _body()
        headers = {
            "content-type": "application/x-npy",
            "accept": "application/x-npy",
            "content-length": str(len(body)),
        }
        path = f"/v1/sessions/{sid}/{route}"

        async def client(n: int) -> None:
            for _ in range(n):
                await _call(app, path, body, headers)

        await asyncio.gather(*(client(200) for _ in range(clients)))  # warm-up
        group = getattr(app.state.store, "_group", None)
        batches = group.batches if group is not None else 0
        wall, loop_cpu = time.perf_counter(), time.thread_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(client(requests // clients) for _ in range(clients)))
        done = requests // clients * clients
        after = resource.getrusage(resource.RUSAGE_SELF)
        process = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        return {
            "rate": done / (time.perf_counter() - wall),
            "loop_us": (time.thread_time() - loop_cpu) / done * 1e6,
            "process_us": process / done * 1e6,
            "per_batch": done / (group.batches - batches) if group is not None else 0.0,
        }


def _one(case: str, requests: int, clients: int) -> None:
    try:
        import uvloop  # the server's loop (uvicorn's default when installed)

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as directory:
        print(json.dumps(asyncio.run(_measure(case, requests, clients, directory))))


def _spread(values: list[float], digits: int = 1) -> str:
    med, low, high = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one case
    args = parser.parse_args()
    if args.one:
        _one(args.one, args.requests, args.clients)
        return
    results: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for r in range(args.rounds):
        for case in CASES:
            out = subprocess.run(
                [sys.executable, __file__, "--one", case, "--requests", str(args.requests),
                 "--clients", str(args.clients)],
                cwd=ROOT, check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"{args.requests} requests x {args.rounds} interleaved rounds, {args.clients} clients, "
        "32x64 float32 .npy; median [min-max]"
    )
    print(f"{'case':18} {'req/s':>24} {'loop us/req':>24} {'process us/req':>24} per batch")
    for case, rows in results.items():
        cols = [_spread([row[k] for row in rows]) for k in ("rate", "loop_us", "process_us")]
        per_batch = statistics.median(row["per_batch"] for row in rows)
        batch = f"{per_batch:9.2f}" if per_batch else f"{'-':>9}"
        print(f"{case:18} {cols[0]:>24} {cols[1]:>24} {cols[2]:>24} {batch}")
    transform = [row["loop_us"] for row in results["transform memory"]]
    for case in ("fit memory", "fit sqlite"):
        ratios = [t / row["loop_us"] for t, row in zip(transform, results[case], strict=True)]
        print(f"transform / {case}, by loop CPU: {_spread(ratios, 2)}")


if __name__ == "__main__":
    main()
