"""Group commit: writers queued behind a running transaction share the next one (and its
single fsync), each acknowledged only after its own data is durable.

A batch runs in two steps: ``stage`` runs every queued write inside one open
transaction (CPU only), ``commit`` makes it durable (the fsync). The first writer to arrive
leads; when its batch is durable the lead goes to the oldest writer still queued, whose batch
holds everything queued behind it. ``enqueue`` only queues, so a caller can release its own
locks before it waits: writes queued meanwhile join the same batch. A batch's outcome is per
write (its result or its domain error) unless the transaction itself fails, in which case
every write of it fails.

A blocking writer (``wait``) that leads runs both steps in its own thread. Writers awaited on
an event loop (``wait_async``) never wait for an fsync there: the loop stages their batch and
one helper thread commits it, then wakes the batch's waiters with one callback per loop.
Measured on 32x64 fits (4 clients, one session): with the whole batch in the helper thread,
each of its statements had to win the GIL back from the loop between requests, so batches
crawled while the loop waited for them; staged on the loop (which holds the GIL anyway), the
helper needs the GIL once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
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
    lead: bool = False  # this write's waiter starts the next batch
    finished: bool = False
    result: Any = None
    error: BaseException | None = None
    wake: threading.Event | None = None  # a blocking waiter's (made when it starts waiting)
    future: asyncio.Future[None] | None = None  # an awaiting waiter's


Stage = Callable[[list[Write[C]], bool], bool]
"""``stage(batch, wait)``: open a transaction and run each write in it, setting its result or
error; False, with nothing done, when ``wait`` is False and the store is busy (another process
holds its write lock). An exception fails the whole batch (rolled back)."""

Commit = Callable[[], None]
"""Make the staged batch durable. An exception fails the whole batch (rolled back)."""


class GroupCommit(Generic[C]):
    """A queue of writes run in batches of at most ``max_batch``, each by ``stage`` then
    ``commit`` (never two batches at once)."""

    def __init__(
        self,
        stage: Stage[C],
        commit: Commit,
        *,
        max_batch: int = 64,
        timeout_s: float = 5.0,
    ):
        self._stage, self._commit = stage, commit
        self._max = max_batch
        self._timeout_s = timeout_s
        self._guard = threading.Lock()
        self._queue: list[Write[C]] = []
        self._leading = False  # a batch is being staged or committed, or its lead is handed
        self._helper: threading.Thread | None = None
        self._helper_turn = threading.Event()  # a batch is handed to the helper thread
        self._handed: tuple[list[Write[C]], bool] | None = None  # (batch, staged)
        self._closed = False
        self.batches = 0  # batches committed (an fsync each): for tests and benchmarks
        self.writes = 0

    def submit(self, fn: Callable[[C], T]) -> T:
        """Run ``fn`` in the next batch; its result once durable, or its error."""
        result: T = self.wait(self.enqueue(fn))
        return result

    def enqueue(self, fn: Callable[[C], Any], *, checks_first: bool = False) -> Write[C]:
        """Queue ``fn``; ``wait`` (or ``wait_async``) for it, always: the first writer leads.
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
                self._run(self._take(), staged=False)  # its write is first in the queue
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
        """``wait`` for a writer on an event loop, which never waits for an fsync."""
        loop = asyncio.get_running_loop()
        lead = False
        with self._guard:
            if not write.finished:
                write.future = loop.create_future()
                lead, write.lead = write.lead, False
        if lead:
            # Staged once the loop has run what is ready now: the requests it handles in this
            # turn queue their writes into the same batch (measured: staging at once halved
            # the batches and cost more per fit than the fsync they overlapped).
            loop.call_soon(self._stage_on_loop)
        woken = write.future
        if woken is not None and not write.finished:
            timer: asyncio.TimerHandle | None = None

            def overdue() -> None:  # a write still queued is withdrawn (its future resolved)
                nonlocal timer
                self._withdraw(write)
                if not write.finished:  # its batch is running: that ends in bounded time
                    timer = loop.call_later(self._timeout_s, overdue)

            timer = loop.call_later(self._timeout_s, overdue)
            try:
                await woken
            finally:
                timer.cancel()
        if write.error is not None:
            raise write.error
        return write.result

    def close(self) -> None:
        """Let the helper thread end (writes queued after this wait out their timeout)."""
        self._closed = True
        self._helper_turn.set()

    # --- running batches ------------------------------------------------------------------

    def _take(self) -> list[Write[C]]:
        with self._guard:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        return batch

    def _stage_on_loop(self) -> None:
        """Stage the next batch here, on the event loop, and hand its commit to the helper
        thread (or, when the store is busy, the whole batch: the helper may wait, the loop
        may not)."""
        batch = self._take()
        if not batch:  # every queued write was withdrawn meanwhile
            self._finish(batch)
            return
        try:
            staged = self._stage(batch, False)
        except BaseException as exc:
            self._fail(batch, exc)
            self._finish(batch)
            return
        with self._guard:
            self._handed = (batch, staged)
            if self._helper is None:
                self._helper = threading.Thread(
                    target=self._serve, name="group-commit", daemon=True
                )
                self._helper.start()
        self._helper_turn.set()

    def _serve(self) -> None:
        while True:
            self._helper_turn.wait()
            self._helper_turn.clear()
            if self._closed:
                return
            with self._guard:
                handed, self._handed = self._handed, None
            if handed is not None:
                self._run(*handed)

    def _run(self, batch: list[Write[C]], staged: bool) -> None:
        """Stage (unless done) and commit ``batch`` in this thread, then wake its writers."""
        try:
            if batch:
                if not staged:
                    self._stage(batch, True)
                self._commit()
                self.batches += 1
                self.writes += len(batch)
        except BaseException as exc:  # the transaction failed as a whole: every write fails
            self._fail(batch, exc)
        finally:
            self._finish(batch)

    @staticmethod
    def _fail(batch: list[Write[C]], exc: BaseException) -> None:
        for w in batch:
            w.result, w.error = None, exc

    def _finish(self, batch: list[Write[C]]) -> None:
        """Mark ``batch`` finished, wake its writers, and hand the lead on."""
        woken: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        with self._guard:
            for w in batch:
                # A write's closure may hold the write it was built on (a session's
                # pipelined commits chain that way): drop it, or the chain never ends.
                w.fn = _ran
                w.lead, w.finished = False, True
                if w.wake is not None:
                    w.wake.set()
                if w.future is not None:
                    woken.setdefault(w.future.get_loop(), []).append(w.future)
            stage_on = None
            if self._queue:
                stage_on = self._hand_lead(self._queue[0])  # its write is in the next batch
            else:
                self._leading = False
        if stage_on is not None:
            woken.setdefault(stage_on, [])
        for loop, futures in woken.items():
            # RuntimeError: the loop closed (shutdown) while its writes were in the batch.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._woken, futures, loop is stage_on)

    def _hand_lead(self, write: Write[C]) -> asyncio.AbstractEventLoop | None:
        """Make ``write``'s waiter start the next batch; the loop that must stage it when
        that waiter awaits it (called with the guard held)."""
        if write.future is not None:
            return write.future.get_loop()
        write.lead = True  # a blocking waiter leads; one not waiting yet will when it does
        if write.wake is not None:
            write.wake.set()
        return None

    def _woken(self, futures: list[asyncio.Future[None]], stage: bool) -> None:
        for future in futures:
            _resolve(future)
        if stage:
            self._stage_on_loop()

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
                if write.future is not None:  # withdrawn on its own loop (``overdue``)
                    _resolve(write.future)


def _ran(connection: Any) -> None:
    raise AssertionError("a write runs once")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
