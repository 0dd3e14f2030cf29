"""The Store interface: durable sessions with atomic updates, versions and idempotency.

The store, not the route, owns atomicity, the version counter and the idempotency records:
``update(session_id, fn)`` runs ``fn(session) -> (new_state | None, result)`` under the
session's lock or transaction, and saves the rendered response for an ``Idempotency-Key``
in the same step, so a retry returns the first answer and nothing is applied twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bncore import BNState
from service.errors import IdempotencyMismatch, PreconditionFailed

R = TypeVar("R")


@dataclass(frozen=True)
class Session:
    """One stored session: its state and bookkeeping. ``version`` counts state changes."""

    id: str
    state: BNState
    version: int
    created_at: float
    updated_at: float
    name: str | None = None
    owner: str | None = None  # who may see it when API keys are configured


@dataclass(frozen=True)
class Replay:
    """A response saved under an idempotency key, returned verbatim on retry."""

    status: int
    media_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` with the request's fingerprint and how to render the answer."""

    key: str
    fingerprint: str


Render = Callable[[Session, R], Replay]
# If-Match: one version, a set of versions (an ETag list matches any of them), or None (any).
IfMatch = int | frozenset[int] | None


def check_version(version: int, if_match: IfMatch) -> None:
    """``PreconditionFailed`` unless ``if_match`` is absent or names the current ``version``."""
    if if_match is None:
        return
    if isinstance(if_match, frozenset):
        if version not in if_match:
            wanted = ", ".join(str(v) for v in sorted(if_match))
            raise PreconditionFailed(f"session is at version {version}, not one of {wanted}")
    elif if_match != version:
        raise PreconditionFailed(f"session is at version {version}, not {if_match}")


def check_fingerprint(idem: Idempotency, stored: str) -> None:
    """``IdempotencyMismatch`` when a known key comes back with another request."""
    if stored != idem.fingerprint:
        raise IdempotencyMismatch(f"Idempotency-Key {idem.key!r} was used with another request")


Change = Callable[[Session], tuple[BNState | None, R]]


class Store(Protocol):
    """What every engine (memory, SQLite, ...) provides. All methods are thread-safe."""

    def create(
        self,
        session: Session,
        *,
        idem: Idempotency | None = None,
        render: Render[None] | None = None,
    ) -> Session | Replay:
        """Insert a new session; with ``idem`` a retry returns the first ``Replay``."""
        ...

    def get(self, session_id: str) -> Session:
        """The session, or ``SessionNotFound``."""
        ...

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        """Sessions ordered by id, ``limit`` of them after id ``after`` (of ``owner`` if given)."""
        ...

    def delete(self, session_id: str, if_match: IfMatch = None) -> None:
        """Remove a session (and its idempotency records)."""
        ...

    def update(
        self,
        session_id: str,
        fn: Change[R],
        *,
        if_match: IfMatch = None,
        idem: Idempotency | None = None,
        render: Render[R] | None = None,
    ) -> tuple[Session, R] | Replay:
        """Atomically apply ``fn``; a new state bumps the version. ``PreconditionFailed`` if
        ``if_match`` is not the current version; a known ``idem`` key returns its ``Replay``."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot serve."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
