"""Group commit: writers queued behind a running transaction share the next one (and its
single fsync), each acknowledged only after its own data is durable.

No thread of its own: the first writer to arrive leads, runs every queued write in one batch
when it waits for its own, then hands the lead to the oldest writer still queued (whose write
then goes out with everything queued behind it). ``enqueue`` only queues, so a caller can
release its own locks before it ``wait``s: writes queued meanwhile join the same batch. A
batch's outcome is per write (its result or its domain error) unless the transaction itself
fails, in which case every write of it fails.
"""

from __future__ import annotations

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
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this write's waiter runs the next batch
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
        self.batches = 0  # batches run (a commit and an fsync each): for tests and benchmarks
        self.writes = 0

    def submit(self, fn: Callable[[C], T]) -> T:
        """Run ``fn`` in the next batch; its result once durable, or its error."""
        result: T = self.wait(self.enqueue(fn))
        return result

    def enqueue(self, fn: Callable[[C], Any]) -> Write[C]:
        """Queue ``fn``; ``wait`` for it (always: the first writer leads from there)."""
        write: Write[C] = Write(fn)
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
                    w.lead, w.finished = False, True
                    w.wake.set()
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True  # it leads the next batch (its own write is in it)
                    nxt.wake.set()
                else:
                    self._leading = False
