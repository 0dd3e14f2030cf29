"""In-process store: a dict of sessions under per-session locks. For tests and one worker."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import TypeVar

from service.errors import SessionNotFound
from service.stores.base import (
    Change,
    Idempotency,
    IfMatch,
    Render,
    Replay,
    Session,
    check_fingerprint,
    check_version,
)

R = TypeVar("R")
_CREATE = ""  # idempotency scope of session creation


class MemoryStore:
    """Sessions live in this process only: with several workers each has its own."""

    def __init__(self, idempotency_ttl_s: float = 86400.0) -> None:
        self._ttl = idempotency_ttl_s
        self._sessions: dict[str, Session] = {}
        self._idem: dict[tuple[str, str], tuple[str, Replay, float]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, scope: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(scope, threading.Lock())

    def _replay(self, scope: str, idem: Idempotency | None) -> Replay | None:
        if idem is None:
            return None
        hit = self._idem.get((scope, idem.key))
        if hit is None or hit[2] < time.time() - self._ttl:
            return None
        check_fingerprint(idem, hit[0])
        return hit[1]

    def _remember(self, scope: str, idem: Idempotency | None, replay: Replay | None) -> None:
        if idem is not None and replay is not None:
            now = time.time()
            with self._guard:
                self._idem[(scope, idem.key)] = (idem.fingerprint, replay, now)
                stale = [k for k, v in self._idem.items() if v[2] < now - self._ttl]
                for k in stale:
                    del self._idem[k]

    def create(
        self,
        session: Session,
        *,
        idem: Idempotency | None = None,
        render: Render[None] | None = None,
    ) -> Session | Replay:
        with self._lock(_CREATE):
            replay = self._replay(_CREATE, idem)
            if replay is not None:
                return replay
            with self._guard:
                self._sessions[session.id] = session
            self._remember(_CREATE, idem, render(session, None) if render and idem else None)
            return session

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        with self._guard:
            ids = sorted(
                i
                for i, s in self._sessions.items()
                if (after is None or i > after) and (owner is None or s.owner == owner)
            )
            return [self._sessions[i] for i in ids[:limit]]

    def delete(self, session_id: str, if_match: IfMatch = None) -> None:
        with self._lock(session_id):
            current = self.get(session_id)
            check_version(current.version, if_match)
            with self._guard:
                del self._sessions[session_id]
                self._locks.pop(session_id, None)
                for k in [k for k in self._idem if k[0] == session_id]:
                    del self._idem[k]

    def update(
        self,
        session_id: str,
        fn: Change[R],
        *,
        if_match: IfMatch = None,
        idem: Idempotency | None = None,
        render: Render[R] | None = None,
    ) -> tuple[Session, R] | Replay:
        with self._lock(session_id):
            current = self.get(session_id)
            replay = self._replay(session_id, idem)
            if replay is not None:
                return replay
            check_version(current.version, if_match)
            new_state, result = fn(current)
            if new_state is not None:
                current = replace(
                    current, state=new_state, version=current.version + 1, updated_at=time.time()
                )
                with self._guard:
                    self._sessions[session_id] = current
            self._remember(session_id, idem, render(current, result) if render and idem else None)
            return current, result

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
