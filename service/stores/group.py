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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import StoreUnavailable

C = TypeVar("C")  # what a write runs against (a connection)
T = TypeVar("T")


@dataclass(eq=False)
class Write(Generic[C]):
    """One queued write: ``fn`` runs inside the batch's transaction."""

    fn: Callable[[C], Any]
    checks_first: bool = False  # raises a domain error only before it changes anything
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this write's waiter runs the next batch
    done: Callable[[], None] | None = None  # an async waiter's wake-up: it never leads
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
        write: Write[C] = Write(fn, checks_first)
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
            elif not write.wake.wait(self._timeout_s):
                self._withdraw(write)
        if write.error is not None:
            raise write.error
        return write.result

    async def wait_async(self, write: Write[C]) -> Any:
        """``wait`` for a writer on an event loop: the batch runs in another thread."""
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def done() -> None:  # in the batch's thread (or the loop's, when withdrawn)
            # RuntimeError: the loop closed (shutdown) while its write was queued.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, woken)

        timer: asyncio.TimerHandle | None = None

        def overdue() -> None:  # on the loop: a write still queued is withdrawn (then done)
            nonlocal timer
            self._withdraw(write)
            if not write.finished:  # its batch is running: that ends in bounded time
                timer = loop.call_later(self._timeout_s, overdue)

        with self._guard:
            if not write.finished:
                write.done = done
                if write.lead:
                    write.lead = False
                    self._hand_lead(write)
        # One timer handle, not ``wait_for(shield(...))``: that costs a task and two futures
        # per commit, on the loop every fit waits on.
        timer = loop.call_later(self._timeout_s, overdue)
        try:
            if not write.finished:
                await woken
        finally:
            assert timer is not None
            timer.cancel()
        if write.error is not None:
            raise write.error
        return write.result

    def _hand_lead(self, write: Write[C]) -> None:
        """Make ``write``'s waiter lead the next batch, or the helper thread if it cannot
        (called with the guard held)."""
        if write.done is None:
            write.lead = True
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
                if write.done is not None:
                    write.done()

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
            with self._guard:
                for w in batch:
                    # A write's closure may hold the write it was built on (a session's
                    # pipelined commits chain that way): drop it, or the chain never ends.
                    w.fn = _ran
                    w.lead, w.finished = False, True
                    w.wake.set()
                    if w.done is not None:
                        w.done()
                if self._queue:
                    self._hand_lead(self._queue[0])  # its own write is in the next batch
                else:
                    self._leading = False


def _ran(connection: Any) -> None:
    raise AssertionError("a write runs once")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
