"""Group commit: writers queued behind a running transaction share the next one (and its
single fsync), each acknowledged only after its own data is durable.

The first writer to arrive leads: it runs every queued write in one batch when it waits for its
own, then hands the lead to the oldest writer still queued (whose write then goes out with
everything queued behind it). ``enqueue`` only queues, so a caller can release its own locks
before it ``wait``s: writes queued meanwhile join the same batch. A batch's outcome is per write
(its result or its domain error) unless the transaction itself fails, in which case every write
of it fails.

A writer on an event loop must not run a batch (it would stall the loop for an fsync):
``wait_async`` hands its lead to one helper thread, started on first use, and is woken through
the loop when its batch is durable. Measured on a 32x64 fit: the thread-pool hop this saves
cost more than the fit's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.errors import StoreUnavailable

C = TypeVar("C")  # what a write runs against (a connection)
T = TypeVar("T")


@dataclass(eq=False)
class Write(Generic[C]):
    """One queued write: ``fn`` runs inside the batch's transaction."""

    fn: Callable[[C], Any]
    checks_first: bool = False  # raises a domain error only before it changes anything
    wake: threading.Event | None = None  # a blocking waiter's, made when it starts waiting
    lead: bool = False  # this write's waiter runs the next batch
    woken: asyncio.Future[None] | None = None  # an awaiting waiter's: it never leads
    queued_at: float = 0.0  # time.monotonic() when queued
    finished: bool = False
    result: Any = None
    error: BaseException | None = None


Runner = Callable[[list[Write[C]]], None]  # runs a batch, sets each write's result or error


class GroupCommit(Generic[C]):
    """A queue of writes run in batches of at most ``max_batch`` by ``runner``."""

    def __init__(self, runner: Runner[C], *, max_batch: int = 64, timeout_s: float = 5.0):
        self._runner = runner
        self._max = max_batch
        self._timeout_s = timeout_s
        self._guard = threading.Lock()
        self._queue: list[Write[C]] = []
        self._leading = False
        self._helper: threading.Thread | None = None
        self._helper_turn = threading.Event()  # the helper thread leads the next batch
        self._closed = False
        # One withdrawal timer per event loop, while it has writes queued (not one per write).
        self._sweepers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}
        self.batches = 0  # batches run (a commit and an fsync each): for tests and benchmarks
        self.writes = 0

    def submit(self, fn: Callable[[C], T]) -> T:
        """Run ``fn`` in the next batch; its result once durable, or its error."""
        result: T = self.wait(self.enqueue(fn))
        return result

    def enqueue(self, fn: Callable[[C], Any], *, checks_first: bool = False) -> Write[C]:
        """Queue ``fn``; ``wait`` for it (always: the first writer leads from there).
        ``checks_first``: ``fn`` raises its domain errors before its first change, so the
        store need not be able to undo it alone."""
        write: Write[C] = Write(fn, checks_first, queued_at=time.monotonic())
        with self._guard:
            self._queue.append(write)
            if not self._leading:
                self._leading = write.lead = True
        return write

    def wait(self, write: Write[C]) -> Any:
        """The write's result once its batch is durable; raises its error."""
        while not write.finished:
            if write.lead:
                self._lead()
                continue
            with self._guard:
                if write.finished or write.lead:
                    continue
                if write.wake is None:
                    write.wake = threading.Event()
                wake = write.wake
            if not wake.wait(self._timeout_s):
                self._withdraw(write)
        if write.error is not None:
            raise write.error
        return write.result

    async def wait_async(self, write: Write[C]) -> Any:
        """``wait`` for a writer on an event loop: the batch runs in another thread."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        with self._guard:
            if not write.finished:
                write.woken = woken
                if write.lead:
                    write.lead = False
                    self._hand_lead(write)
        if loop not in self._sweepers:
            self._watch(loop)
        if not write.finished:
            await woken
        if write.error is not None:
            raise write.error
        return write.result

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweep ``loop``'s queued writes every half timeout from now on, while it has any
        (measured: a timer per write cost ~5% of the loop's time per fit)."""
        handle = loop.call_later(self._timeout_s / 2, self._sweep, loop)
        with self._guard:  # (another loop, in another thread, may be sweeping too)
            for closed in [other for other in self._sweepers if other.is_closed()]:
                del self._sweepers[closed]
            self._sweepers[loop] = handle

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Withdraw ``loop``'s writes still queued after the timeout (a write in a running
        batch is not withdrawn: that batch ends in bounded time, and answers it)."""
        now = time.monotonic()
        with self._guard:
            mine = [w for w in self._queue if w.woken is not None and w.woken.get_loop() is loop]
        for w in mine:
            if now - w.queued_at >= self._timeout_s:
                self._withdraw(w)
        again = len(mine) > sum(w.finished for w in mine)  # some still queued: keep sweeping
        handle = loop.call_later(self._timeout_s / 2, self._sweep, loop) if again else None
        with self._guard:
            if handle is None:
                del self._sweepers[loop]
            else:
                self._sweepers[loop] = handle

    def _hand_lead(self, write: Write[C]) -> None:
        """Make ``write``'s waiter lead the next batch, or the helper thread if it cannot
        (called with the guard held)."""
        if write.woken is None:  # a blocking waiter, or one that is not waiting yet
            write.lead = True
            if write.wake is not None:
                write.wake.set()
            return
        if self._helper is None:
            self._helper = threading.Thread(target=self._serve, name="group-commit", daemon=True)
            self._helper.start()
        self._helper_turn.set()

    def _serve(self) -> None:
        while True:
            self._helper_turn.wait()
            self._helper_turn.clear()
            if self._closed:
                return
            self._lead()

    def close(self) -> None:
        """Let the helper thread end (writes queued after this wait out their timeout)."""
        self._closed = True
        self._helper_turn.set()

    def _withdraw(self, write: Write[C]) -> None:
        # A batch runs in bounded time (the store's busy timeout and one fsync); if that bound
        # passes while the write is still queued, it never ran: withdraw it and say so.
        with self._guard:
            if write in self._queue and not write.lead:
                self._queue.remove(write)
                write.error = StoreUnavailable(
                    f"the store took longer than {self._timeout_s:g} s to accept a write"
                )
                write.finished = True
                if write.woken is not None:  # withdrawn on its own loop (``_sweep``)
                    _resolve(write.woken)

    def _lead(self) -> None:
        with self._guard:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        try:
            self._runner(batch)
            self.batches += 1
            self.writes += len(batch)
        except BaseException as exc:  # the transaction failed as a whole: every write fails
            for w in batch:
                w.result, w.error = None, exc
        finally:
            woken: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            with self._guard:
                for w in batch:
                    # A write's closure may hold the write it was built on (a session's
                    # pipelined commits chain that way): drop it, or the chain never ends.
                    w.fn = _ran
                    w.lead, w.finished = False, True
                    if w.wake is not None:
                        w.wake.set()
                    if w.woken is not None:
                        woken.setdefault(w.woken.get_loop(), []).append(w.woken)
                if self._queue:
                    self._hand_lead(self._queue[0])  # its own write is in the next batch
                else:
                    self._leading = False
            for loop, futures in woken.items():  # one wake-up per loop, not one per write
                # RuntimeError: the loop closed (shutdown) while its writes were queued.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve_all, futures)


def _ran(connection: Any) -> None:
    raise AssertionError("a write runs once")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # (a cancelled request's is)
        future.set_result(None)


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        _resolve(future)
