"""What the HTTP edge (service/server.py) costs per request, next to stock uvicorn protocols.

    python bench/edge.py [--requests 20000] [--rounds 5]

In one process, with no sockets and no load generator: each protocol parses requests handed to
``data_received`` by an in-memory transport and runs a trivial ASGI app (read the body, answer
two bytes), on uvloop as uvicorn runs it. CPU time per request isolates the protocol's own work
from the noise of a shared machine (bench/http.py measures the whole stack). Rounds are
interleaved over the protocols; the best round counts.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its http.py shadows the stdlib's.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.server import EdgeLimits, EdgeProtocol

BODY = b"x" * 8192
CASES = {
    "GET, one read": [b"GET /healthz HTTP/1.1\r\nHost: b\r\nUser-Agent: bench\r\n\r\n"],
    "POST 8 KiB, one read": [
        b"POST /t HTTP/1.1\r\nHost: b\r\nContent-Type: application/x-npy\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    ],
    "POST 8 KiB, head then body": [
        b"POST /t HTTP/1.1\r\nHost: b\r\nContent-Type: application/x-npy\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY),
        BODY,
    ],
    "POST offering h2c (Java)": [
        b"POST /t HTTP/1.1\r\nHost: b\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    ],
}


class Transport(asyncio.Transport):
    """Collects what the protocol writes; ``done`` is set when a response has ended."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"ok"):
            self.done.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def measure(factory: Callable[..., asyncio.Protocol], reads: list[bytes], n: int) -> float:
    """CPU microseconds per request over ``n`` requests on one keep-alive connection."""
    # log_level error: the stock protocols warn on every upgrade offer.
    config = Config(app, access_log=False, lifespan="off", ws="none", log_level="error")
    config.load()
    state = ServerState()
    protocol = factory(config=config, server_state=state, app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    start = time.process_time()
    for _ in range(n):
        transport.done.clear()
        for data in reads:
            protocol.data_received(data)
        await transport.done.wait()
    elapsed = time.process_time() - start
    protocol.connection_lost(None)
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    protocols: dict[str, Callable[..., asyncio.Protocol]] = {
        "edge": functools.partial(EdgeProtocol, limits=EdgeLimits()),
        "httptools": HttpToolsProtocol,
        "h11": H11Protocol,
    }
    best: dict[tuple[str, str], float] = {}
    loop = uvloop.new_event_loop()
    for _ in range(args.rounds):
        for case, reads in CASES.items():
            for name, factory in protocols.items():
                us = loop.run_until_complete(measure(factory, reads, args.requests))
                key = (case, name)
                best[key] = min(best.get(key, us), us)
    loop.close()
    print(f"{'CPU us per request':28} " + " ".join(f"{n:>10}" for n in protocols))
    for case in CASES:
        print(f"{case:28} " + " ".join(f"{best[case, n]:10.1f}" for n in protocols))
    print("(stock httptools answers the h2c POST without its body: Kludex/uvicorn#2722)")


if __name__ == "__main__":
    main()
