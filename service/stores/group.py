"""Group commit: writers queued behind a running transaction share the next one (and its
single fsync), each acknowledged only after its own data is durable.

No thread of its own: the first writer to arrive leads, runs every queued write in one
batch, then hands the lead to the oldest writer still waiting (whose write then goes out
with everything queued behind it). A batch's outcome is per write (its result or its
domain error) unless the transaction itself fails, in which case every write of it fails.
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
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # set with ``done`` when this write is handed the lead instead
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
        write: Write[C] = Write(fn)
        with self._guard:
            self._queue.append(write)
            lead = not self._leading
            self._leading = True
        if not lead:
            self._wait(write)
        if not write.done.is_set() or write.lead:
            self._lead()
        if write.error is not None:
            raise write.error
        result: T = write.result
        return result

    def _wait(self, write: Write[C]) -> None:
        # A batch runs in bounded time (the store's busy timeout and one fsync); if that bound
        # passes while the write is still queued, it never ran: withdraw it and say so.
        while not write.done.wait(self._timeout_s):
            with self._guard:
                if write in self._queue:
                    self._queue.remove(write)
                    write.error = StoreUnavailable(
                        f"the store took longer than {self._timeout_s:g} s to accept a write"
                    )
                    write.done.set()
                    return

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
            for w in batch:
                w.lead = False
                w.done.set()
            with self._guard:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()  # it leads the next batch (its write is in it)
                else:
                    self._leading = False
