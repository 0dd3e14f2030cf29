"""A store as one API key sees it: the caller's owner id bound to every owner-checked call.

Another owner's session answers exactly like a missing one (404), and the store checks the
owner before it reads the state, so ids leak nothing, not even through timing.
"""

from __future__ import annotations

from dataclasses import replace

from bncore import BNState
from service.stores.base import (
    CREATE_SCOPE,
    CommitResult,
    HistoryEntry,
    HistoryItem,
    IfMatch,
    PendingCommit,
    Receipt,
    Session,
    Store,
    create_scope,
    lease_for_commit,
    loop_safe,
    read_cached,
    submit_commit,
)


class OwnedStore:
    """Wraps a ``Store`` for the caller ``owner`` (a digest of the caller's API key)."""

    def __init__(self, inner: Store, owner: str) -> None:
        self.inner = inner
        self.owner = owner
        self.loop_safe = loop_safe(inner)

    def read(self, session_id: str, owner: str | None = None) -> Session:
        return self.inner.read(session_id, self.owner)

    def commit(
        self,
        session_id: str,
        expected_version: int,
        state: BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
    ) -> CommitResult:
        # Callers read (owner checked) before they commit, and owners never change.
        return self.inner.commit(
            session_id, expected_version, state, receipt=receipt, history=history
        )

    def submit_commit(
        self,
        session_id: str,
        expected_version: int,
        state: BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
        after: PendingCommit | None = None,
    ) -> PendingCommit:
        return submit_commit(
            self.inner,
            session_id,
            expected_version,
            state,
            receipt=receipt,
            history=history,
            after=after,
        )

    def read_cached(self, session_id: str, owner: str | None = None) -> Session | None:
        return read_cached(self.inner, session_id, self.owner)

    def lease_for_commit(self, session_id: str, current: Session) -> Session | None:
        return lease_for_commit(self.inner, session_id, current)

    def create(self, session: Session, *, receipt: Receipt | None = None) -> CommitResult:
        if receipt is not None:
            receipt = replace(receipt, scope=create_scope(self.owner))
        return self.inner.create(replace(session, owner=self.owner), receipt=receipt)

    def receipt(self, scope: str, key: str) -> Receipt | None:
        if scope.startswith(CREATE_SCOPE):  # creates: this owner's key space only
            scope = create_scope(self.owner)
        return self.inner.receipt(scope, key)

    def delete(self, session_id: str, owner: str | None = None, if_match: IfMatch = None) -> None:
        self.inner.delete(session_id, self.owner, if_match)

    def history(self, session_id: str, limit: int, before: int | None = None) -> list[HistoryItem]:
        return self.inner.history(session_id, limit, before)

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        return self.inner.list(limit, after, self.owner)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()
