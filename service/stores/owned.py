"""A store as one API key sees it: only its own sessions, its own idempotency keys.

Another owner's session answers exactly like a missing one (404), so ids leak nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from bncore import BNState
from service.errors import SessionNotFound
from service.stores.base import Change, Idempotency, IfMatch, Render, Replay, Session, Store

R = TypeVar("R")


class OwnedStore:
    """Wraps a ``Store`` for the caller ``owner`` (a digest of the caller's API key)."""

    def __init__(self, inner: Store, owner: str) -> None:
        self.inner = inner
        self.owner = owner

    def _idem(self, idem: Idempotency | None) -> Idempotency | None:
        return None if idem is None else replace(idem, key=f"{self.owner}:{idem.key}")

    def create(
        self,
        session: Session,
        *,
        idem: Idempotency | None = None,
        render: Render[None] | None = None,
    ) -> Session | Replay:
        return self.inner.create(
            replace(session, owner=self.owner), idem=self._idem(idem), render=render
        )

    def get(self, session_id: str) -> Session:
        session = self.inner.get(session_id)
        if session.owner != self.owner:
            raise SessionNotFound(session_id)
        return session

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        return self.inner.list(limit, after, self.owner)

    def delete(self, session_id: str, if_match: IfMatch = None) -> None:
        self.get(session_id)  # owners never change, so checking first is enough
        self.inner.delete(session_id, if_match)

    def update(
        self,
        session_id: str,
        fn: Change[R],
        *,
        if_match: IfMatch = None,
        idem: Idempotency | None = None,
        render: Render[R] | None = None,
    ) -> tuple[Session, R] | Replay:
        self.get(session_id)  # a foreign session is 404 before If-Match could answer 412

        def owned(session: Session) -> tuple[BNState | None, R]:
            if session.owner != self.owner:  # cannot happen (owners never change): belt and braces
                raise SessionNotFound(session_id)
            return fn(session)

        return self.inner.update(
            session_id, owned, if_match=if_match, idem=self._idem(idem), render=render
        )

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()
