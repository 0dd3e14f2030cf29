"""Which sessions take turns through a Redis lease, and the lease this process holds for each.

Replicas that commit to one session at the same time race: one wins the version check, the
others re-read, combine again and retry. For a session where this process often meets such a
race ("hot"), ``RedisStore.lease_for_commit`` first takes the session's lease in Redis (waiting
for its turn, woken by the holder's commit), so writers take turns instead of retrying. The
lease costs a round trip per commit, a retry about two plus a recombine and a short sleep: a
session goes on leases as soon as a commit meets a race (a conflict, or a lease held by
another process) and goes back to plain optimistic commits once about the last dozen
commits met none, so sessions nobody races on pay nothing. A commit that ignores a lease
another process holds is refused as a conflict (``redis_functions.lua``), which puts its
writer on leases too. (Measured with bench/store.py: entering only above 30% of racing
commits made processes drift in and out of leases on a hot session, and p99 went 4-8x up.)
"""

from __future__ import annotations

import threading

# A turn lasts at most this long: a dead holder blocks no one longer; a holder slower than
# that only costs itself a retry. (250 ms measured the same on a hot session.)
LEASE_MS = 50
_WEIGHT = 0.125  # of the latest commit in the share of recent commits that met a race
ENTER, LEAVE = _WEIGHT, 0.02  # of that share: one race enters, ~14 quiet commits leave
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
