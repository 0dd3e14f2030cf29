"""Where a durable fit's rate is bounded: the SQLite fit next to what no store at all, and a
store whose durability costs nothing but its wait, reach over HTTP (issue 10's fit floor).

    python bench/fit_ceiling.py [--rounds 3] [--seconds 3] [--ack-us 0,300,600] [--clients 4]

One server process per store, each 1 worker on 127.0.0.1, served as the CLI serves (uvloop,
httptools, the same protocol class); wrk -t1 -cN posts a 32x64 float32 .npy (Accept .npy) to
one session. Cases, rounds interleaved:

- ``transform sqlite``, ``fit sqlite``: the store as served (synchronous=FULL);
- ``fit memory``: no durability at all, the fit route's own cost;
- ``fit thread-ack N``: the memory store, each commit applied at once on the loop but
  acknowledged only after a batch of this process's group commit (``service.stores.group``,
  the SQLite store's machinery) has waited N us with the GIL released: a SQLite whose SQL and
  fsync cost no CPU and no GIL, only N us of latency;
- ``fit process-ack N``: the same, acknowledged by a writer process (a pipe each way) that
  answers each batch after N us: no thread of the server's shares its GIL.

Each fit case is printed against ``transform sqlite`` of the same round (the floor's
denominator): if even the simulated stores stay below the floor, no store behind this fit path
and this group commit can reach it on this machine. Nothing here asserts: it prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds http.py: run as a script, it must not shadow the stdlib's http.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import os
import shutil
import struct
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from bench.http import (
    NPY,
    Case,
    Server,
    create_session,
    free_port,
    loader,
    measure_rounds,
    npy,
    per_round,
    print_rates,
    spread,
    start_server,
)

_SEQ = struct.Struct("<q")
FLOOR = 0.75


# --- the simulated stores (in the server process) -------------------------------------------


class _Acked:
    """A commit applied at once, whose acknowledgement waits for ``seq`` to be acknowledged."""

    __slots__ = ("outcome", "seq", "writer")

    def __init__(self, writer: Any, seq: int, outcome: Any) -> None:
        self.writer, self.seq, self.outcome = writer, seq, outcome

    def result(self) -> Any:
        raise NotImplementedError("the simulated stores serve fits on the event loop only")

    async def wait(self) -> Any:
        await self.writer.acknowledged(self.seq)
        return self.outcome


class _ThreadWriter:
    """Acknowledgements through the group commit, each batch waiting ``ack_s`` (GIL released)."""

    def __init__(self, ack_s: float) -> None:
        from service.stores.group import GroupCommit

        def run(batch: list[Any]) -> None:
            if ack_s:
                time.sleep(ack_s)
            for w in batch:
                w.result = None

        self._group: Any = GroupCommit(run)
        self._writes: dict[int, Any] = {}
        self._seq = 0

    def submit(self) -> int:
        self._seq += 1
        self._writes[self._seq] = self._group.enqueue(lambda db: None, checks_first=True)
        return self._seq

    async def acknowledged(self, seq: int) -> None:
        await self._group.wait_async(self._writes.pop(seq))


class _ProcessWriter:
    """Acknowledgements from a writer process: it reads every sequence number queued, waits
    ``ack_s`` and answers the highest (a batch); the event loop reads the answers."""

    def __init__(self, ack_s: float) -> None:
        argv = [sys.executable, "-m", "bench.fit_ceiling", "writer", str(ack_s)]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._out, self._in = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self._seq = self._acked = 0
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._reading = False

    def submit(self) -> int:
        if not self._reading:
            asyncio.get_running_loop().add_reader(self._in, self._on_answer)
            self._reading = True
        self._seq += 1
        os.write(self._out, _SEQ.pack(self._seq))
        return self._seq

    def _on_answer(self) -> None:
        data = os.read(self._in, 1 << 16)
        self._acked = _SEQ.unpack_from(data, len(data) - _SEQ.size)[0]
        still = []
        for seq, future in self._waiting:
            if seq > self._acked:
                still.append((seq, future))
            elif not future.done():
                future.set_result(None)
        self._waiting = still

    async def acknowledged(self, seq: int) -> None:
        if seq > self._acked:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((seq, future))
            await future


def _writer_main(ack_s: float) -> None:
    """The writer process: a batch is whatever has queued on stdin meanwhile (8-byte pipe
    writes are atomic, and a read of 64 KiB ends on a whole one), answered with its last."""
    while data := os.read(0, 1 << 16):
        if ack_s:
            time.sleep(ack_s)
        os.write(1, data[-_SEQ.size :])


def simulated_app() -> Any:
    """The app factory of a simulated server: ``BENCH_WRITER`` (thread or process) and
    ``BENCH_ACK_US`` from the environment. One process, so commits never conflict."""
    import service.app
    from service.stores.memory import MemoryStore

    ack_s = float(os.environ["BENCH_ACK_US"]) / 1e6
    kind = _ThreadWriter if os.environ["BENCH_WRITER"] == "thread" else _ProcessWriter

    class SimulatedStore(MemoryStore):
        def __init__(self, options: Any = None) -> None:
            super().__init__(options)
            self._writer: _ThreadWriter | _ProcessWriter | None = None

        def submit_commit(
            self,
            session_id: str,
            expected_version: int,
            state: Any,
            *,
            receipt: Any = None,
            history: Any = None,
            after: Any = None,
        ) -> _Acked:
            out = self.commit(session_id, expected_version, state, receipt=receipt, history=history)
            if self._writer is None:
                self._writer = kind(ack_s)
            return _Acked(self._writer, self._writer.submit(), out)

    def open_simulated(url: str, options: Any = None, xp: Any = None) -> SimulatedStore:
        return SimulatedStore(options)

    service.app.open_store = open_simulated  # type: ignore[attr-defined]
    return service.app.app_from_env()


# --- the driver -----------------------------------------------------------------------------


def _serve(workdir: Path, name: str, store: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    if env is None:  # the CLI, as deployed
        argv = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        argv += ["--store", store, "--device", "cpu", "--log-level", "warning"]
    else:
        argv = [sys.executable, "-m", "bench.fit_ceiling", "serve", str(port)]
    env = {**(env or {}), "BNAAS_STORE": store, "BNAAS_DEVICE": "cpu"}
    return start_server(name, argv, port, "/readyz", workdir, env=env)


def _server_main(port: int) -> None:
    from service.server import run
    from service.settings import Settings

    run(Settings(port=port, log_level="warning"), app="bench.fit_ceiling:simulated_app")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per case per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--ack-us", default="0,300,600", help="simulated commit latencies")
    args = parser.parse_args()
    acks = [int(a) for a in args.ack_us.split(",") if a]
    workdir = Path(tempfile.mkdtemp(prefix="bnaas-bench-ceiling-"))
    body = npy(np.random.default_rng(0).normal(0, 1, (32, 64)).astype(np.float32))
    headers = {**NPY, "accept": NPY["content-type"]}
    servers: list[Server] = []
    cases: list[Case] = []

    def add(server: Server, routes: tuple[str, ...], label: str) -> None:
        servers.append(server)
        sid = create_session(server.port, 64)
        for route in routes:
            path = f"/v1/sessions/{sid}/{route}"
            case = Case(f"{route} {label}", server.port, path, body, headers)
            case.pid = server.proc.pid
            cases.append(case)

    try:
        add(
            _serve(workdir, "sqlite", f"sqlite:///{workdir}/bench.db"),
            ("transform", "fit"),
            "sqlite",
        )
        add(_serve(workdir, "memory", "memory://"), ("fit",), "memory")
        for writer in ("thread", "process"):
            for ack in acks:
                env = {"BENCH_WRITER": writer, "BENCH_ACK_US": str(ack)}
                name = f"{writer}-ack {ack}"
                add(_serve(workdir, name.replace(" ", "-"), "memory://", env), ("fit",), name)
        load, how = loader(args.clients, workdir, python_client=False)
        print(f"{how}; {args.rounds} rounds x {args.seconds:g} s per case, interleaved\n")
        results = measure_rounds(cases, load, args.seconds, args.rounds, args.seconds)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_rates(cases, results)
    print(f"\n{'fit / transform sqlite (per round)':42} {'req/s':>6} {'min-max':>11}  floor")
    den = results.rps["transform sqlite"]
    for case in cases[1:]:
        med, rng = spread(per_round(results.rps[case.name], den), "{:.2f}")
        print(f"{case.name:42} {med:>6} {rng:>11}  {FLOOR:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        _writer_main(float(sys.argv[2]))
    elif sys.argv[1:2] == ["serve"]:
        _server_main(int(sys.argv[2]))
    else:
        main()
