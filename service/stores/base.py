"""The Store interface: durable sessions, a versioned commit, O(C) idempotency receipts and a
bounded per-session fit history.

A store owns durability, the version check, the receipts and the history bounds, nothing else.
The arithmetic of a change runs in ``service.commit`` ("compute outside, commit inside"): it
reads ``(version, state)``, combines in O(C) and calls ``commit(expected_version, ...)``, which
answers ``Committed`` | ``Conflict`` (someone else moved the version: re-read and recombine) |
``Duplicate`` (the idempotency key is already held: answer from its receipt). Every method is
thread-safe. A store that cannot serve raises ``service.errors.StoreUnavailable`` (503 +
Retry-After), never anything else; a record that cannot be decoded is ``CorruptRecord`` (a
``StoreUnavailable``): never a 409 and never a 500.

Owners: ``owner=None`` means "any caller" (no API keys configured); otherwise a session whose
owner differs answers exactly like a missing one (``SessionNotFound``), and stores check it
before they read the state, so "not yours" and "not there" cost the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bncore import BNState
from service.errors import IdempotencyMismatch, PreconditionFailed, StoreUnavailable

CREATE_SCOPE = "create:"  # receipt scope of session creation: CREATE_SCOPE + (owner or "")


def create_scope(owner: str | None) -> str:
    """The receipt scope of creates by ``owner``: each owner has its own key space."""
    return CREATE_SCOPE + (owner or "")


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
    """A rendered answer (status, media type, body, headers), as routes build them; stores
    never keep one (receipts are O(C): see ``Receipt``)."""

    status: int
    media_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` with the fingerprint of the request that carried it."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Receipt:
    """What a store keeps for an idempotency key: O(C), never a rendered response body.

    ``scope`` is the session id for changes of a session, ``create_scope(owner)`` for creates.
    ``session_id`` is the session the request created or changed: deleting that session drops
    every receipt that names it (so create, DELETE, the same create again makes a new session).
    ``version`` is the version the request produced; ``payload`` is the operation's own O(C)
    record (``service.commit`` encodes it: the batch statistics of a fit, ...), opaque to stores.
    Receipts expire ``idempotency_ttl_s`` after ``created_at`` (seconds since the epoch).
    """

    scope: str
    key: str
    fingerprint: str
    session_id: str
    version: int
    payload: bytes
    created_at: float

    def check(self, idem: Idempotency) -> None:
        """``IdempotencyMismatch`` (422) when the key comes back with another request."""
        if self.fingerprint != idem.fingerprint:
            raise IdempotencyMismatch(f"Idempotency-Key {idem.key!r} was used with another request")


@dataclass(frozen=True)
class HistoryEntry:
    """One fit as the history keeps it. ``full`` carries per-channel values (kept for the
    ``recent`` newest fits of a session), ``brief`` only the summary (kept for older fits whose
    version is a multiple of ``every``). Both are opaque bytes to stores."""

    version: int  # the version this fit produced (unique per session)
    time: float
    full: bytes
    brief: bytes
    num_features: int = 0  # C: sizes the full window (``HistoryPolicy.recent_for``); 0 unknown


@dataclass(frozen=True)
class HistoryItem:
    """One stored history entry: ``data`` is the entry's ``full`` bytes when ``full``, else
    its ``brief`` bytes."""

    version: int
    data: bytes
    full: bool


@dataclass(frozen=True)
class HistoryPolicy:
    """How much history a store keeps per session (bounded, whatever the number of fits).

    After each commit with a history entry: the ``recent_for(C)`` newest entries are kept full; an
    entry older than those is kept brief when ``version % every == 0`` and dropped otherwise;
    of the brief entries only the ``older`` newest are kept. ``recent == 0`` keeps no history.
    """

    recent: int = 100
    every: int = 10
    older: int = 1000
    max_values: int = 1 << 22  # per session: full entries hold ~5*C values each

    def recent_for(self, num_features: int) -> int:
        """How many newest entries stay full for a session of ``num_features`` channels:
        ``recent``, fewer when that many would hold more than ``max_values`` values (at
        least 1 while ``recent`` > 0)."""
        if num_features <= 0 or self.recent == 0:
            return self.recent
        return max(1, min(self.recent, self.max_values // (5 * num_features)))


@dataclass(frozen=True)
class StoreOptions:
    """What every engine is opened with (``open_store``); built from the settings."""

    idempotency_ttl_s: float = 24 * 3600.0
    history: HistoryPolicy = HistoryPolicy()
    timeout_s: float = 5.0  # longest wait for the store (a lock, a connection, a reply): then 503
    pool_size: int = 4  # connections per process (SQLite readers, Redis pool)
    workers: int = 1  # server worker processes sharing the store (memory refuses more than 1)


@dataclass(frozen=True)
class Committed:
    """The commit is durable; ``session`` is the stored session after it."""

    session: Session


@dataclass(frozen=True)
class Conflict:
    """The session is no longer at the expected version (another writer moved it). A store
    that reads the stored session in the same call (Redis) sends it along: the commit loop
    combines again on it instead of reading it back."""

    version: int  # the version found
    session: Session | None = None


@dataclass(frozen=True)
class Duplicate:
    """The receipt's key is already held (unexpired): nothing was written."""

    receipt: Receipt


CommitResult = Committed | Conflict | Duplicate


class PendingCommit(Protocol):
    """A commit handed to a store that pipelines commits (see ``submit_commit``)."""

    def result(self) -> CommitResult:
        """Block until the commit is durable (or refused); raises what ``commit`` raises."""
        ...

    async def wait(self) -> CommitResult:
        """``result`` for a caller on an event loop: never blocks the loop."""
        ...


@dataclass(frozen=True)
class Ready:
    """A commit that already has its result (stores that commit synchronously)."""

    outcome: CommitResult

    def result(self) -> CommitResult:
        return self.outcome

    async def wait(self) -> CommitResult:
        return self.outcome


def loop_safe(store: Store) -> bool:
    """Whether a commit may be submitted and awaited from the event loop: the store's reads
    and ``submit_commit`` never wait on the network (memory, SQLite: a commit only queues).
    Others (Redis) are driven from the thread pool."""
    return bool(getattr(store, "loop_safe", False))


def submit_commit(
    store: Store,
    session_id: str,
    expected_version: int,
    state: BNState,
    *,
    receipt: Receipt | None = None,
    history: HistoryEntry | None = None,
    after: PendingCommit | None = None,
) -> PendingCommit:
    """Hand a commit to ``store`` without waiting for its durability, when the store can
    (it has a ``submit_commit`` method of this signature, less ``store``: the SQLite store's
    group commit); else commit now. ``after`` is the pending commit whose predicted state
    this one was combined on: this one may only land if that one did (else ``Conflict``),
    so that the version check never accepts a state built on a commit that failed."""
    pipelined = getattr(store, "submit_commit", None)
    if pipelined is not None:
        pending: PendingCommit = pipelined(
            session_id,
            expected_version,
            state,
            receipt=receipt,
            history=history,
            after=after,
        )
        return pending
    if after is not None and not landed(after):
        return Ready(Conflict(-1))
    return Ready(
        store.commit(session_id, expected_version, state, receipt=receipt, history=history)
    )


def landed(pending: PendingCommit) -> bool:
    """Whether ``pending`` committed (waits for it); a store fault counts as not landed."""
    try:
        return isinstance(pending.result(), Committed)
    except StoreUnavailable:  # it failed: what was built on it must not land either
        return False


def lease_for_commit(store: Store, session_id: str, current: Session) -> Session | None:
    """Called by the commit loop before it combines on ``current`` (the session's lock in this
    process held): a store that makes writers of several processes take turns (Redis: a
    lease on sessions they raced on) waits for this process's turn, which its next ``commit``
    of the session ends. Returns the stored session when it has moved past ``current``, else
    None. A no-op for stores without a ``lease_for_commit`` method of this signature."""
    lease = getattr(store, "lease_for_commit", None)
    if lease is None:
        return None
    found: Session | None = lease(session_id, current)
    return found


def read_cached(store: Store, session_id: str, owner: str | None = None) -> Session | None:
    """The newest copy of the session the store keeps in this process, with no I/O (None when
    it has none, or none of ``owner``; always None for stores without a ``read_cached``
    method). Only for a caller whose commit checks the version: a copy may be stale."""
    cached = getattr(store, "read_cached", None)
    found: Session | None = None if cached is None else cached(session_id, owner)
    return found


class CorruptRecord(StoreUnavailable):
    """A stored record cannot be decoded (torn write, foreign bytes): 503, never 409/500."""

    slug, title = "store-corrupt", "Session record cannot be read"


# If-Match: one version, a set of versions (an ETag list matches any of them), or None (any).
IfMatch = int | frozenset[int] | None


def version_matches(version: int, if_match: IfMatch) -> bool:
    """True when ``if_match`` is absent or names ``version`` (a list matches any of its tags)."""
    if if_match is None:
        return True
    if isinstance(if_match, frozenset):
        return version in if_match
    return version == if_match


def check_version(version: int, if_match: IfMatch) -> None:
    """``PreconditionFailed`` unless ``if_match`` is absent or names the current ``version``."""
    if version_matches(version, if_match):
        return
    if isinstance(if_match, frozenset):
        wanted = ", ".join(str(v) for v in sorted(if_match))
        raise PreconditionFailed(f"session is at version {version}, not one of {wanted}")
    raise PreconditionFailed(f"session is at version {version}, not {if_match}")


class Store(Protocol):
    """What every engine (memory, SQLite, Redis) provides. All methods are thread-safe."""

    def read(self, session_id: str, owner: str | None = None) -> Session:
        """The session, or ``SessionNotFound`` (also when ``owner`` is given and differs:
        checked before the state is read)."""
        ...

    def commit(
        self,
        session_id: str,
        expected_version: int,
        state: BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
    ) -> CommitResult:
        """Atomically, in this order: ``Duplicate`` if ``receipt``'s (scope, key) is held and
        unexpired; ``SessionNotFound`` if the session is gone; ``Conflict`` unless it is at
        ``expected_version``; else store ``state`` at version ``expected_version + 1``
        (``updated_at`` now), the receipt and the history entry (applying the
        ``HistoryPolicy``) and return ``Committed`` once all of it is durable."""
        ...

    def create(self, session: Session, *, receipt: Receipt | None = None) -> CommitResult:
        """Insert a new session (its id is fresh and unguessable): ``Committed``, or
        ``Duplicate`` when ``receipt``'s (scope, key) is held and unexpired."""
        ...

    def receipt(self, scope: str, key: str) -> Receipt | None:
        """The unexpired receipt of ``key`` in ``scope``, or None."""
        ...

    def delete(self, session_id: str, owner: str | None = None, if_match: IfMatch = None) -> None:
        """Remove a session, its history and every receipt naming it; ``SessionNotFound``,
        ``PreconditionFailed`` when ``if_match`` is not the current version."""
        ...

    def history(self, session_id: str, limit: int, before: int | None = None) -> list[HistoryItem]:
        """Up to ``limit`` entries with ``version < before`` (all when None), newest first.
        The caller checks the owner (``read``) first; an unknown session has no entries."""
        ...

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        """Sessions ordered by id, ``limit`` of them after id ``after`` (of ``owner`` if given)."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot serve (readiness)."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
