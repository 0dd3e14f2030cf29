"""Scale-out store: sessions in Redis, shared by any number of ``bnaas serve`` replicas.

Every state change is ONE Redis Function call (``redis_functions.lua``, loaded at startup with
``FUNCTION LOAD REPLACE``) that checks the receipt and the expected version, writes the state,
keeps the O(C) receipt and appends the history entry: nothing is ever half-applied, and
replicas need no sticky routing. The per-session lock and the re-read-and-recombine loop live
in ``service.commit``; sessions that replicas race on take turns through a lease in Redis
(``lease_for_commit``, ``redis_lease``). Keys of one session share a hash tag, so Redis Cluster
works too.

Faults (refused, timed out, Redis loading its data, read-only, out of memory, AOF not
writable) raise ``StoreUnavailable`` (503 + Retry-After) within ``timeout_s`` per attempt
(one retry, which also reconnects after a Redis restart); the pool reconnects by itself, so
service resumes without restarting bnaas.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from importlib.resources import files
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

import bncore
from service.errors import SessionNotFound, StoreUnavailable
from service.stores.base import (
    CREATE_SCOPE,
    CommitResult,
    Committed,
    Conflict,
    CorruptRecord,
    Duplicate,
    HistoryEntry,
    HistoryItem,
    IfMatch,
    Receipt,
    Session,
    StoreOptions,
    check_version,
)
from service.stores.cache import SessionCache
from service.stores.redis_lease import LEASE_MS, Turns

T = TypeVar("T")
log = logging.getLogger("bnaas")

LIBRARY = files("service.stores").joinpath("redis_functions.lua").read_text()
_RECEIPT = ("fp", "sid", "ver", "pl", "ca")  # a receipt's fields, in this order
INDEX = "bnaas:sessions"  # sorted set of every session id (score 0: ordered by id)
RETRY_AFTER_S = 1
# Replies of a Redis that cannot serve for now: loading its data, a read-only replica after a
# failover, out of memory, its AOF not writable (disk full), a cluster resharding. 503s.
_UNAVAILABLE = ("LOADING", "READONLY", "OOM", "MISCONF", "MASTERDOWN", "TRYAGAIN",
                "CLUSTERDOWN", "BUSY", "NOREPLICAS")  # fmt: skip


def session_keys(session_id: str) -> list[str]:
    """``[state, log, brief]``: one hash tag, so one Redis Cluster slot per session."""
    tag = f"{{s:{session_id}}}"
    return [f"{tag}:state", f"{tag}:log", f"{tag}:brief"]


def lease_keys(session_id: str, token: str = "") -> list[str]:
    """``[lease, queue, wake]`` of a session (``wake``: the waiter ``token``'s wake-up list)."""
    tag = f"{{s:{session_id}}}"
    return [f"{tag}:lease", f"{tag}:queue", f"{tag}:wake:{token}"]


def receipt_key(scope: str, key: str, session_scoped: bool) -> str:
    """A fit's receipt lives with its session; a create's under its own scope's tag."""
    return f"{{s:{scope}}}:idem:{key}" if session_scoped else f"{{{scope}}}:receipt:{key}"


def owner_index(owner: str) -> str:
    return f"{INDEX}:owner:{owner}"


def _ids_after(r: redis.Redis, index: str, start: str, count: int) -> list[str]:
    """Up to ``count`` ids of ``index`` after ``start`` (``-`` or ``(id``), in order."""
    return [
        i.decode() if isinstance(i, bytes) else i
        for i in r.zrangebylex(index, start, "+", 0, count)
    ]


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


def _owner_args(owner: str | None) -> list[str]:
    return ["0", ""] if owner is None else ["1", owner]


class RedisStore:
    """The store interface on Redis (``redis://`` or ``rediss://``, password in the URL)."""

    def __init__(
        self,
        url: str,
        options: StoreOptions | None = None,
        xp: ModuleType = np,
        *,
        lease_ms: int = LEASE_MS,
        turns: Turns | None = None,
    ) -> None:
        options = options or StoreOptions()
        timeout_s = options.timeout_s
        self._timeout_s = timeout_s
        self._lease_ms = lease_ms
        self._turns = turns or Turns()
        self._ttl_ms = max(1, int(options.idempotency_ttl_s * 1000))
        self._xp = xp
        self._policy = options.history
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=options.pool_size,
            timeout=timeout_s,  # waiting for a free connection is bounded too
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_keepalive=True,
            # One retry: a pooled connection that Redis closed (restart, idle timeout) fails
            # once, then reconnects. Commits are safe to resend (the Function's commit token).
            retry=Retry(ExponentialBackoff(cap=timeout_s / 4, base=0.05), 1),
        )
        self._redis = redis.Redis(connection_pool=pool)
        # Waiting for a lease blocks a connection (BLPOP, at most one lease long): its own
        # pool, so that waiters never starve the commits that would wake them.
        waits = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=options.pool_size,
            timeout=timeout_s,
            socket_timeout=timeout_s + lease_ms / 1000,
            socket_connect_timeout=timeout_s,
            socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=timeout_s / 4, base=0.05), 1),
        )
        self._waits = redis.Redis(connection_pool=waits)
        self._where = f"redis store at {url.split('@')[-1]}"  # never the password
        self._cache = SessionCache()
        try:
            self._load()
        except StoreUnavailable as exc:
            # Start anyway: /readyz answers 503 until Redis is back, and the first call
            # that finds the library missing loads it.
            log.warning("%s", exc)

    # --- plumbing ---

    def _load(self) -> None:
        """``FUNCTION LOAD REPLACE``: idempotent, so every replica does it at startup."""
        with self._faults():
            self._redis.function_load(LIBRARY, replace=True)

    @contextmanager
    def _faults(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        except redis.ResponseError as exc:
            if str(exc).split(" ", 1)[0] in _UNAVAILABLE or isinstance(
                exc, (redis.ReadOnlyError, redis.OutOfMemoryError)
            ):
                raise self._unavailable(exc) from None
            raise

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"{self._where} unavailable: {exc}", RETRY_AFTER_S)

    def _fcall(self, function: str, keys: list[str], args: list[Any], ro: bool = False) -> Any:
        """A library function (``ro``: FCALL_RO, which a read-only replica may serve too); a
        Redis that lost the library (restarted without persistence, ``FUNCTION FLUSH``) gets
        it again, once."""
        call = self._redis.fcall_ro if ro else self._redis.fcall
        with self._faults():
            try:
                return call(function, len(keys), *keys, *args)
            except redis.ResponseError as exc:
                if "function not found" not in str(exc).lower():
                    raise
                self._load()
                return call(function, len(keys), *keys, *args)

    def _call(self, fn: Callable[[redis.Redis], T]) -> T:
        with self._faults():
            return fn(self._redis)

    def _decode(self, session_id: str, blob: bytes) -> bncore.BNState:
        try:
            return bncore.state_from_bytes(blob, self._xp)
        except (ValueError, KeyError, TypeError, bncore.BNError) as exc:
            raise CorruptRecord(f"session {session_id!r}: state record unreadable: {exc}") from None

    def _session(self, session_id: str, row: list[Any], cached: Session | None = None) -> Session:
        version, owner, name, created, updated, blob = row
        version = int(version)
        if blob is None:
            if cached is not None and cached.version == version:
                return cached
            raise CorruptRecord(f"session {session_id!r} at version {version} has no state")
        state = self._decode(session_id, bytes(blob))
        session = Session(
            session_id, state, version, float(created), float(updated), _text(name), _text(owner)
        )
        self._cache.put(session)
        return session

    # --- the store interface ---

    def read(self, session_id: str, owner: str | None = None) -> Session:
        cached = self._cache.get(session_id)
        have = "" if cached is None else str(cached.version)
        keys = session_keys(session_id)[:1]
        row = self._fcall("bnaas_read_v2", keys, [*_owner_args(owner), have], ro=True)
        if row is not None and row[5] is None and self._cache.get(session_id) is not cached:
            # Our copy was evicted or replaced meanwhile: ask for the state itself.
            row = self._fcall("bnaas_read_v2", keys, [*_owner_args(owner), ""], ro=True)
        if row is None:
            raise SessionNotFound(session_id)
        return self._session(session_id, row, cached)

    def read_cached(self, session_id: str, owner: str | None = None) -> Session | None:
        """The newest session this process decoded, with no round trip (None when it has
        none, or ``owner`` differs: owners never change). Only for a caller whose commit
        checks the version (the commit loop): a stale copy costs a conflict, which sends
        the stored session along (``Conflict.session``): a fit is one call when the copy is
        current."""
        cached = self._cache.get(session_id)
        if cached is None or (owner is not None and cached.owner != owner):
            return None
        return cached

    def lease_for_commit(self, session_id: str, current: Session) -> Session | None:
        """Before combining on ``current``: on a hot session, wait for this process's turn (the
        session's lease in Redis), which the next ``commit`` releases. The stored session when
        another writer moved it past ``current``, else None. Never fails for want of a turn:
        after ``timeout_s`` the commit goes ahead unleased (the version check keeps it exact)."""
        if not self._turns.is_hot(session_id):
            # A snapshot read before another thread of this process committed: its commit
            # would conflict. The newest session this process saw costs nothing to check.
            known = self._cache.get(session_id)
            return known if known is not None and known.version > current.version else None
        token = secrets.token_hex(8)
        keys = [session_keys(session_id)[0], *lease_keys(session_id, token)]
        args = [token, self._lease_ms, str(current.version)]
        deadline, waited = time.monotonic() + self._timeout_s, False
        while True:
            reply = self._fcall("bnaas_lease_v2", keys, args)
            if reply[0] != b"wait":
                break
            waited = True
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # Woken when the holder's commit hands the lease over; else at its expiry.
            wait = min(left, int(reply[1]) / 1000 + 0.002)
            self._wait_turn(keys[3], wait)
        if reply[0] == b"missing":
            return None  # the commit answers it
        self._turns.hold(session_id, token, waited)
        if int(reply[1]) == current.version:
            return None
        return self._session(session_id, reply[1:], None)

    def _wait_turn(self, wake: str, seconds: float) -> None:
        with self._faults():
            self._waits.blpop([wake], max(seconds, 0.001))

    def commit(
        self,
        session_id: str,
        expected_version: int,
        state: bncore.BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
    ) -> CommitResult:
        keys = session_keys(session_id)
        lease, queue, _ = lease_keys(session_id)
        token, waited = self._turns.take(session_id)
        if receipt is not None and receipt.scope != session_id:
            raise ValueError(f"a commit's receipt belongs to its session, not {receipt.scope!r}")
        rkey = receipt_key(session_id, receipt.key, True) if receipt else keys[0]
        now = time.time()
        policy = self._policy
        recent = policy.recent_for(history.num_features) if history else 0
        reply = self._fcall(
            "bnaas_commit_v2",
            [keys[0], rkey, keys[1], keys[2], lease, queue],
            [
                expected_version,
                bncore.state_to_bytes(state),
                secrets.token_hex(8),  # tells a resend of this very call from another commit
                repr(now),
                *self._receipt_args(receipt),
                "1" if history else "0",
                history.full if history else b"",
                history.brief if history else b"",
                recent, policy.every, policy.older, token, self._lease_ms,
            ],
        )  # fmt: skip
        outcome = reply[0]
        if outcome == b"missing":
            self._cache.drop(session_id)
            raise SessionNotFound(session_id)
        if outcome == b"duplicate":
            assert receipt is not None  # only a commit with a receipt finds one held
            return Duplicate(self._receipt(receipt.scope, receipt.key, reply[1:]))
        # Replicas that often race on a session take turns (see redis_lease).
        self._turns.observe(session_id, waited or outcome == b"conflict")
        if outcome == b"conflict":
            if len(reply) > 2 and reply[6] is not None:  # the stored session came along
                return Conflict(int(reply[1]), self._session(session_id, reply[1:]))
            return Conflict(int(reply[1]))
        version, updated, owner, name, created = reply[1:]
        session = Session(
            session_id, state, int(version), float(created), float(updated), _text(name),
            _text(owner),
        )  # fmt: skip
        self._cache.put(session)
        return Committed(session)

    def _receipt_args(self, receipt: Receipt | None) -> list[Any]:
        if receipt is None:
            return ["0", "", "", 0, b"", 0, self._ttl_ms]
        return [
            "1", receipt.fingerprint, receipt.session_id, receipt.version, receipt.payload,
            repr(receipt.created_at), self._ttl_ms,
        ]  # fmt: skip

    @staticmethod
    def _receipt(scope: str, key: str, fields: list[Any]) -> Receipt:
        fp, sid, version, payload, created = fields
        return Receipt(
            scope, key, fp.decode(), sid.decode(), int(version), bytes(payload), float(created)
        )

    def create(self, session: Session, *, receipt: Receipt | None = None) -> CommitResult:
        keys = session_keys(session.id)

        def index(r: redis.Redis) -> None:
            # The index entry goes first: a crash before the session exists leaves an id
            # that listing skips, never a session that listing cannot find.
            pipe = r.pipeline(transaction=False)
            pipe.zadd(INDEX, {session.id: 0})
            if session.owner:
                pipe.zadd(owner_index(session.owner), {session.id: 0})
            pipe.execute()

        self._call(index)
        created = self._fcall(
            "bnaas_create_v2",
            keys,
            [
                bncore.state_to_bytes(session.state), session.version, session.owner or "",
                session.name or "", repr(session.created_at),
            ],
        )  # fmt: skip
        if created[0] != b"created":
            raise StoreUnavailable(f"session id {session.id!r} already exists")
        if receipt is not None:
            held = self._claim(receipt)
            if held is not None:
                # Another request with this key won (a concurrent retry): undo ours.
                self.delete(session.id)
                return Duplicate(held)
        self._cache.put(session)
        return Committed(session)

    def _claim(self, receipt: Receipt) -> Receipt | None:
        """Take a create's receipt (after its session exists); the held one, if any. A held
        receipt whose session is gone (deleted, or its create died half way) is replaced."""
        rkey = receipt_key(receipt.scope, receipt.key, False)
        stale = ""
        for _ in range(2):
            args = self._receipt_args(receipt)[1:]
            reply = self._fcall("bnaas_claim_v2", [rkey], [*args, stale])
            if reply[0] == b"claimed":
                return None
            held = self._receipt(receipt.scope, receipt.key, reply[1:])
            if self._exists(held.session_id):
                return held
            stale = held.session_id
        raise StoreUnavailable(f"idempotency key {receipt.key!r} is contended; retry")

    def _exists(self, session_id: str) -> bool:
        return bool(self._call(lambda r: r.exists(session_keys(session_id)[0])))

    def receipt(self, scope: str, key: str) -> Receipt | None:
        if scope.startswith(CREATE_SCOPE):
            rkey = receipt_key(scope, key, session_scoped=False)
            fields: list[Any] = self._call(lambda r: r.hmget(rkey, *_RECEIPT))
            held = None if fields[0] is None else self._receipt(scope, key, fields)
            # Deleting a session drops every receipt that names it.
            return held if held is not None and self._exists(held.session_id) else None

        def fetch(r: redis.Redis) -> list[Any]:
            # A fit's receipt lives with its session: one round trip for both.
            pipe = r.pipeline(transaction=False)
            pipe.hmget(receipt_key(scope, key, session_scoped=True), *_RECEIPT)
            pipe.exists(session_keys(scope)[0])
            return pipe.execute()

        fields, exists = self._call(fetch)
        return self._receipt(scope, key, fields) if fields[0] is not None and exists else None

    def delete(self, session_id: str, owner: str | None = None, if_match: IfMatch = None) -> None:
        reply = self._fcall(
            "bnaas_delete_v2",
            [*session_keys(session_id), *lease_keys(session_id)[:2]],
            [*_owner_args(owner), _if_match_arg(if_match)],
        )
        self._cache.drop(session_id)
        if reply[0] == b"missing":
            raise SessionNotFound(session_id)
        if reply[0] == b"mismatch":
            check_version(int(reply[1]), if_match)
        stored_owner = _text(reply[1])

        def unindex(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.zrem(INDEX, session_id)
            if stored_owner:
                pipe.zrem(owner_index(stored_owner), session_id)
            pipe.execute()

        self._call(unindex)

    def history(self, session_id: str, limit: int, before: int | None = None) -> list[HistoryItem]:
        if limit <= 0 or (before is not None and before <= 1):
            return []
        _, log, brief = session_keys(session_id)
        top = "+" if before is None else str(before - 1)

        def fetch(r: redis.Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.xrevrange(log, top, "-", count=limit)
            pipe.xrevrange(brief, top, "-", count=limit)
            return pipe.execute()

        full, older = self._call(fetch)
        items = [HistoryItem(int(i.split(b"-")[0]), bytes(f[b"f"]), True) for i, f in full]
        oldest_full = items[-1].version if items else None
        items += [
            HistoryItem(int(i.split(b"-")[0]), bytes(f[b"b"]), False)
            for i, f in older
            if oldest_full is None or int(i.split(b"-")[0]) < oldest_full
        ]
        items.sort(key=lambda h: h.version, reverse=True)
        return items[:limit]

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        index = owner_index(owner) if owner else INDEX
        out: list[Session] = []
        start = f"({after}" if after else "-"
        while len(out) < limit:
            page: Callable[[redis.Redis], list[str]] = partial(
                _ids_after, index=index, start=start, count=limit - len(out)
            )
            ids = self._call(page)
            if not ids:
                break

            def fetch(r: redis.Redis, ids: list[str] = ids) -> list[Any]:
                pipe = r.pipeline(transaction=False)
                for sid in ids:
                    pipe.hmget(session_keys(sid)[0], "v", "own", "name", "ca", "ua", "st")
                return pipe.execute()

            for sid, row in zip(ids, self._call(fetch), strict=True):
                if row[0] is not None and (owner is None or _text(row[1]) == owner):
                    out.append(self._session(sid, row))
            start = f"({ids[-1]}"
        return out

    def ping(self) -> None:
        with self._faults():
            self._redis.ping()

    def close(self) -> None:
        for r in (self._redis, self._waits):
            r.close()
            r.connection_pool.disconnect()


def _if_match_arg(if_match: IfMatch) -> str:
    """If-Match for the delete function: '' (any) or the versions, comma-separated."""
    if if_match is None:
        return ""
    if isinstance(if_match, frozenset):
        return ",".join(str(v) for v in sorted(if_match))
    return str(if_match)
