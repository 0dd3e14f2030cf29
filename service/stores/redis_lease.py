"""Which sessions take turns through a Redis lease, and the lease this process holds for each.

Replicas that commit to one session at the same time race: one wins the version check, the
others re-read, combine again and retry. For a session that saw such a race lately ("hot"),
``RedisStore.lease_for_commit`` first takes the session's lease in Redis (waiting for its turn,
woken by the holder's commit), so writers take turns instead of retrying. A session that has
not raced for ``hot_s`` seconds goes back to plain optimistic commits: uncontended sessions
pay no extra round trip.
"""

from __future__ import annotations

import threading
import time

HOT_S = 2.0  # a race keeps a session on leases this long
LEASE_MS = 250  # a turn lasts at most this long: a dead holder blocks no one longer
_PRUNE_AT = 4096  # hot entries kept before expired ones are dropped (bounded memory)


class Turns:
    """Thread-safe: the hot sessions (until when), and this process's lease token per session."""

    def __init__(self, hot_s: float = HOT_S) -> None:
        self._hot_s = hot_s
        self._lock = threading.Lock()
        self._hot: dict[str, float] = {}
        self._held: dict[str, str] = {}

    def heat(self, session_id: str) -> None:
        """``session_id`` saw a race (a conflict, a held lease, a version moved by another)."""
        now = time.monotonic()
        with self._lock:
            if len(self._hot) >= _PRUNE_AT:
                self._hot = {s: t for s, t in self._hot.items() if t > now}
            self._hot[session_id] = now + self._hot_s

    def is_hot(self, session_id: str) -> bool:
        with self._lock:
            until = self._hot.get(session_id)
        return until is not None and until > time.monotonic()

    def hold(self, session_id: str, token: str) -> None:
        """This process holds ``session_id``'s lease with ``token`` until its next commit."""
        with self._lock:
            self._held[session_id] = token

    def take(self, session_id: str) -> str:
        """The token the next commit of ``session_id`` releases ('' when none is held)."""
        with self._lock:
            return self._held.pop(session_id, "")
