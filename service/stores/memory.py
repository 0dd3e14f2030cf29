"""In-process store for tests: dicts under one lock. One worker process only (refused else)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace

from bncore import BNState
from service.errors import SessionNotFound
from service.stores.base import (
    CommitResult,
    Committed,
    Conflict,
    Duplicate,
    HistoryEntry,
    HistoryItem,
    HistoryPolicy,
    IfMatch,
    Receipt,
    Session,
    StoreOptions,
    check_version,
)


@dataclass
class _History:
    """The newest entries in full, and the downsampled older ones (brief), oldest first."""

    recent: deque[HistoryEntry] = field(default_factory=deque)
    older: deque[tuple[int, bytes]] = field(default_factory=deque)

    def add(self, entry: HistoryEntry, policy: HistoryPolicy) -> None:
        self.recent.append(entry)
        keep = policy.recent_for(entry.num_features)
        while len(self.recent) > keep:
            old = self.recent.popleft()
            if old.version % policy.every == 0 and policy.older > 0:
                self.older.append((old.version, old.brief))
                if len(self.older) > policy.older:
                    self.older.popleft()


class MemoryStore:
    """Sessions live in this process only, so a second worker would see other sessions:
    ``StoreOptions.workers > 1`` is refused."""

    loop_safe = True  # every call is in memory (see base.loop_safe)

    def __init__(self, options: StoreOptions | None = None) -> None:
        options = options or StoreOptions()
        if options.workers > 1:
            raise ValueError(
                f"the memory:// store keeps sessions inside one process; it cannot serve "
                f"{options.workers} worker processes (use sqlite:/// or redis://, or 1 worker)"
            )
        self._ttl = options.idempotency_ttl_s
        self._policy = options.history
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        # Insertion order is creation order: expired receipts are popped from the front.
        self._receipts: OrderedDict[tuple[str, str], Receipt] = OrderedDict()
        self._named: dict[str, set[tuple[str, str]]] = {}  # session id -> receipts naming it
        self._history: dict[str, _History] = {}

    def _live(self, scope: str, key: str, now: float) -> Receipt | None:
        found = self._receipts.get((scope, key))
        if found is None or found.created_at < now - self._ttl:
            return None
        return found

    def _expire(self, now: float) -> None:
        while self._receipts:
            k, oldest = next(iter(self._receipts.items()))
            if oldest.created_at >= now - self._ttl:
                return
            del self._receipts[k]
            self._named.get(oldest.session_id, set()).discard(k)

    def _keep(self, receipt: Receipt, now: float) -> None:
        k = (receipt.scope, receipt.key)
        self._receipts.pop(k, None)  # an expired one: the new one goes to the end
        self._receipts[k] = receipt
        self._named.setdefault(receipt.session_id, set()).add(k)
        self._expire(now)

    def read(self, session_id: str, owner: str | None = None) -> Session:
        found = self._sessions.get(session_id)
        if found is None or (owner is not None and found.owner != owner):
            raise SessionNotFound(session_id)
        return found

    def commit(
        self,
        session_id: str,
        expected_version: int,
        state: BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
    ) -> CommitResult:
        now = time.time()
        with self._lock:
            if receipt is not None:
                held = self._live(receipt.scope, receipt.key, now)
                if held is not None:
                    return Duplicate(held)
            current = self.read(session_id)
            if current.version != expected_version:
                return Conflict(current.version)
            new = replace(current, state=state, version=expected_version + 1, updated_at=now)
            self._sessions[session_id] = new
            if receipt is not None:
                self._keep(receipt, now)
            if history is not None and self._policy.recent > 0:
                self._history.setdefault(session_id, _History()).add(history, self._policy)
            return Committed(new)

    def create(self, session: Session, *, receipt: Receipt | None = None) -> CommitResult:
        now = time.time()
        with self._lock:
            if receipt is not None:
                held = self._live(receipt.scope, receipt.key, now)
                if held is not None:
                    return Duplicate(held)
                self._keep(receipt, now)
            self._sessions[session.id] = session
            return Committed(session)

    def receipt(self, scope: str, key: str) -> Receipt | None:
        with self._lock:
            return self._live(scope, key, time.time())

    def delete(self, session_id: str, owner: str | None = None, if_match: IfMatch = None) -> None:
        with self._lock:
            check_version(self.read(session_id, owner).version, if_match)
            del self._sessions[session_id]
            self._history.pop(session_id, None)
            for k in self._named.pop(session_id, set()):
                self._receipts.pop(k, None)

    def history(self, session_id: str, limit: int, before: int | None = None) -> list[HistoryItem]:
        with self._lock:
            h = self._history.get(session_id)
            if h is None:
                return []
            items = [HistoryItem(e.version, e.full, True) for e in reversed(h.recent)]
            items += [HistoryItem(v, b, False) for v, b in reversed(h.older)]
        return [i for i in items if before is None or i.version < before][:limit]

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        with self._lock:
            ids = sorted(
                i
                for i, s in self._sessions.items()
                if (after is None or i > after) and (owner is None or s.owner == owner)
            )
            return [self._sessions[i] for i in ids[:limit]]

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
