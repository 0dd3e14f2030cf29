"""The Redis store's commits from the event loop (redis.asyncio): a small fit's commit is
awaited on the loop instead of blocking a pool thread (a thread hop and two wake-ups less per
fit; measured with bench/store.py).

The connection settings are the thread pool's (``pool_kwargs``): the same timeouts (then
``StoreUnavailable``, 503), one retry that reconnects after a Redis restart. Each event loop
gets its own client: an asyncio connection belongs to the loop that opened it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Coroutine
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff

from service.stores.base import CommitResult


def pool_kwargs(timeout_s: float, pool_size: int, read_timeout_s: float) -> dict[str, Any]:
    """Pool settings shared by the thread and the loop clients: every wait is bounded."""
    return {
        "max_connections": pool_size,
        "timeout": timeout_s,  # waiting for a free connection is bounded too
        "socket_timeout": read_timeout_s,
        "socket_connect_timeout": timeout_s,
        "socket_keepalive": True,
    }


def retry(timeout_s: float, asynchronous: bool = False) -> Any:
    """One retry: a pooled connection that Redis closed (restart, idle timeout) fails once,
    then reconnects. Commits are safe to resend (the Function's commit token)."""
    backoff = ExponentialBackoff(cap=timeout_s / 4, base=0.05)
    if asynchronous:
        from redis.asyncio.retry import Retry as AsyncRetry

        return AsyncRetry(backoff, 1)
    from redis.retry import Retry

    return Retry(backoff, 1)


def on_loop() -> bool:
    """Whether the caller runs on an event loop (the commit loop driven by ``_drive_async``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LoopClients:
    """One ``redis.asyncio`` client per event loop, made on first use."""

    def __init__(self, url: str, timeout_s: float, pool_size: int) -> None:
        self._url, self._timeout_s, self._pool_size = url, timeout_s, pool_size
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                kwargs = pool_kwargs(self._timeout_s, self._pool_size, self._timeout_s)
                pool = aioredis.BlockingConnectionPool.from_url(
                    self._url, **kwargs, retry=retry(self._timeout_s, asynchronous=True)
                )
                client = self._clients[loop] = aioredis.Redis(connection_pool=pool)
            return client

    def close(self) -> None:
        """Close each loop's sockets, on its loop (store.close() runs in the app's shutdown,
        on the loop itself, where nothing can be awaited: the transports close at once)."""
        with self._lock:
            clients, self._clients = list(self._clients.items()), weakref.WeakKeyDictionary()
        for loop, client in clients:
            if loop.is_closed():
                continue
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                _drop(client)
            else:
                loop.call_soon_threadsafe(_drop, client)


def _drop(client: aioredis.Redis) -> None:
    """Close a loop client's connections without awaiting (on its loop)."""
    pool = client.connection_pool
    for conn in [*pool._get_free_connections(), *pool._get_in_use_connections()]:
        conn._close()  # type: ignore[no-untyped-call]  # redis-py's own close, no await


def is_fault(exc: BaseException) -> bool:
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


class LoopCommit:
    """A commit sent from the event loop (a ``PendingCommit``): ``wait`` on the loop; a pool
    thread's fit combined on it (``after``) may ``result`` from its thread."""

    def __init__(self, send: Coroutine[Any, Any, CommitResult]) -> None:
        self._done = threading.Event()
        self._task = asyncio.ensure_future(send)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[CommitResult]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: a request that went away leaves no warning
        self._done.set()

    def result(self) -> CommitResult:
        self._done.wait()
        return self._task.result()

    async def wait(self) -> CommitResult:
        # Shielded: a request cancelled meanwhile (client gone) does not cut the commit in
        # half; the commit loop forgets it as it forgets any commit that raised.
        return await asyncio.shield(self._task)
