"""Which sessions take turns through a Redis lease, and the lease this process holds for each.

Replicas that commit to one session at the same time race: one wins the version check, the
others re-read, combine again and retry. For a session where this process often meets such a
race ("hot"), ``RedisStore.lease_for_commit`` first takes the session's lease in Redis (waiting
for its turn, woken by the holder's commit), so writers take turns instead of retrying. The
lease costs a round trip per commit (and, under load, idle waits while the holder's process
gets the CPU), a retry about two round trips plus a recombine and a short sleep: a session
goes on leases when more than ``ENTER`` of its recent commits met a race (a conflict, or a
lease held by another process), and back to plain optimistic commits below ``LEAVE``.
Measured (bench/store.py, 2 replicas): one hot session races on every commit and takes
turns; 8 sessions shared by both replicas race on ~1 commit in 6 and stay optimistic, which
costs less CPU per fit there than leases.
"""

from __future__ import annotations

import threading

LEASE_MS = 250  # a turn lasts at most this long: a dead holder blocks no one longer
ENTER, LEAVE = 0.3, 0.1  # share of recent commits that met a race (hysteresis)
_WEIGHT = 0.125  # of the latest commit in that share (about the last 8 commits count)
_PRUNE_AT = 4096  # sessions tracked before the quiet ones are dropped (bounded memory)


class Turns:
    """Thread-safe: how often each session's commits race, which sessions take turns, and
    this process's lease token per session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._raced: dict[str, float] = {}  # session -> share of recent commits that raced
        self._hot: set[str] = set()
        self._held: dict[str, tuple[str, bool]] = {}

    def observe(self, session_id: str, raced: bool) -> None:
        """One commit of ``session_id``: did it meet a race (conflict, or had to wait)?"""
        with self._lock:
            if len(self._raced) >= _PRUNE_AT:
                self._raced = {s: r for s, r in self._raced.items() if r >= LEAVE}
                self._hot &= self._raced.keys()
            share = self._raced.get(session_id, 0.0)
            share += _WEIGHT * ((1.0 if raced else 0.0) - share)
            self._raced[session_id] = share
            if share >= ENTER:
                self._hot.add(session_id)
            elif share < LEAVE:
                self._hot.discard(session_id)

    def is_hot(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._hot

    def hold(self, session_id: str, token: str, waited: bool) -> None:
        """This process holds ``session_id``'s lease with ``token`` until its next commit
        (``waited``: another process held it first)."""
        with self._lock:
            self._held[session_id] = (token, waited)

    def take(self, session_id: str) -> tuple[str, bool]:
        """The token the next commit of ``session_id`` releases ('' when none is held), and
        whether taking it meant waiting for another process."""
        with self._lock:
            return self._held.pop(session_id, ("", False))
