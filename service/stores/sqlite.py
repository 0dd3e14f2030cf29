"""Embedded default store: one SQLite file in WAL mode, every acknowledged write fsynced.

Writes go through a group commit (``group.GroupCommit``): the commits queued behind a running
transaction share the next one and its one fsync (``synchronous=FULL``), each acknowledged
only once durable. Reads use a bounded pool of connections. Any SQLite error is a
``StoreUnavailable`` (503) and the connection that met it is closed, so a fault that goes away
(disk full, a file made read-only and back) heals without a restart; an undecodable record
is a ``CorruptRecord``. Several worker processes may share one file: the version check in
``commit`` makes their writes to one session line up (``service.commit`` retries conflicts).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

import bncore
from service.errors import SessionNotFound, StoreUnavailable
from service.stores.base import (
    CommitResult,
    Committed,
    Conflict,
    CorruptRecord,
    Duplicate,
    HistoryEntry,
    HistoryItem,
    IfMatch,
    PendingCommit,
    Receipt,
    Session,
    StoreOptions,
    check_version,
    landed,
)
from service.stores.cache import SessionCache
from service.stores.group import GroupCommit, Write
from service.stores.sqlite_schema import SCHEMA_VERSION, migrate

T = TypeVar("T")
_COLUMNS = "id, name, version, state, created_at, updated_at, owner"
_OLDEST_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
_RECEIPT = "scope, key, fingerprint, session_id, version, payload, created_at"
Row = tuple[Any, ...]


class SQLiteStore:
    """Sessions as rows of compact binary state records (``bncore.state_to_bytes``)."""

    loop_safe = True  # a commit only queues; reads are local (see base.loop_safe)

    def __init__(
        self, path: Path, options: StoreOptions | None = None, xp: ModuleType = np
    ) -> None:
        if sqlite3.sqlite_version_info < _OLDEST_SQLITE:
            raise RuntimeError(
                f"the SQLite store needs SQLite {'.'.join(map(str, _OLDEST_SQLITE))} or newer; "
                f"this Python has {sqlite3.sqlite_version}"
            )
        opts = options or StoreOptions()
        self._path = path
        self._xp = xp
        self._ttl = opts.idempotency_ttl_s
        self._policy = opts.history
        self._timeout_s = opts.timeout_s
        self._pool_size = max(1, opts.pool_size)
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._opened = 0  # reader connections open (idle or in use), at most pool_size
        self._pool_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None  # used by the group's leader only
        self._group: GroupCommit[sqlite3.Connection] = GroupCommit(
            self._run, timeout_s=opts.timeout_s + 1.0
        )
        self._appended: dict[str, int] = {}  # sessions given history in the running batch
        self._history_rows: list[tuple[str, int, float, bytes, bytes]] = []  # not inserted yet
        self._fault: str | None = None  # the last write failure, until a write succeeds
        self._wrote = False  # a write succeeded since this process opened the store
        self._ready = False  # schema checked (and migrated) by this process
        self._next_expiry = 0.0
        self._cache = SessionCache()
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(StoreUnavailable):
            self._ensure()  # else not servable yet (readiness says so): retried on next use

    # --- connections -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=self._timeout_s
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
            return CorruptRecord(f"sqlite store at {self._path} is damaged: {exc}")
        return StoreUnavailable(f"sqlite store at {self._path} unavailable: {exc}")

    def _take(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._pool_lock:
            grow = self._opened < self._pool_size
            self._opened += int(grow)
        if grow:
            try:
                return self._connect()
            except sqlite3.Error as exc:
                with self._pool_lock:
                    self._opened -= 1
                raise self._unavailable(exc) from None
        try:
            return self._idle.get(timeout=self._timeout_s)
        except queue.Empty:
            raise StoreUnavailable(
                f"no sqlite connection free within {self._timeout_s:g} s"
            ) from None

    def _drop(self, db: sqlite3.Connection) -> None:
        db.close()
        with self._pool_lock:
            self._opened -= 1

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection; one that meets an SQLite error is closed (a new one is opened
        on demand), so a connection opened while the file was read-only does not linger."""
        self._ensure()
        db = self._take()
        try:
            yield db
        except sqlite3.Error as exc:
            self._drop(db)
            raise self._unavailable(exc) from None
        except CorruptRecord:
            self._drop(db)  # its page cache may hold what could not be read: start afresh
            raise
        except BaseException:
            self._idle.put(db)
            raise
        if self._closed:
            self._drop(db)
        else:
            self._idle.put(db)

    # --- the write path -------------------------------------------------------------------

    def _ensure(self) -> None:
        if self._ready:
            return
        current = False
        try:  # current already: reads need no write (a read-only file still answers them)
            db = self._take()
        except StoreUnavailable:
            db = None
        if db is not None:
            try:
                current = db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
                self._idle.put(db)
            except sqlite3.Error:
                self._drop(db)
        if not current:
            self._write(migrate, ensure=False)
        self._ready = True

    def _write(self, fn: Callable[[sqlite3.Connection], T], ensure: bool = True) -> T:
        if ensure:
            self._ensure()
        return self._group.submit(fn)

    def _run(self, batch: list[Write[sqlite3.Connection]]) -> None:
        """One transaction for the whole batch; each write in its own savepoint, so a write
        that fails with a domain error (not found, If-Match) is undone alone (unless it
        ``checks_first``: then there is nothing to undo). Few statements per write: this runs
        in the group's thread, and each statement has to win the GIL back from the loop."""
        try:
            if self._writer is None:
                self._writer = self._connect()
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            outcomes: list[tuple[Any, BaseException | None]] = []
            for w in batch:
                alone = not w.checks_first
                if alone:
                    self._insert_history(db)  # in order: this write may delete them
                    db.execute("SAVEPOINT w")
                try:
                    outcomes.append((w.fn(db), None))
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    if alone:
                        db.execute("ROLLBACK TO w")
                    outcomes.append((None, exc))
                if alone:
                    db.execute("RELEASE w")
            self._insert_history(db)
            for sid, num_features in self._appended.items():
                self._trim(db, sid, num_features)
            if self._ready:
                self._expire(db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fault = str(exc)
            self._reset_writer()
            raise self._unavailable(exc) from None
        except BaseException:  # (not a write's domain error): no transaction left open
            self._reset_writer()
            raise
        finally:
            self._appended.clear()
            self._history_rows.clear()
        self._fault, self._wrote = None, True
        for w, (result, error) in zip(batch, outcomes, strict=True):
            w.result, w.error = result, error
            if isinstance(result, Committed):  # durable: later reads skip decoding it
                self._cache.put(result.session)

    def _reset_writer(self) -> None:
        # After a failed write the connection may hold a half-open transaction or have been
        # opened read-only: close it; the next batch opens a fresh one.
        db, self._writer = self._writer, None
        if db is not None:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            db.close()

    def _expire(self, db: sqlite3.Connection) -> None:
        """Drop expired receipts through the age index (never a full scan), once a second."""
        now = time.time()
        if now >= self._next_expiry:
            db.execute("DELETE FROM receipts WHERE created_at < ?", (now - self._ttl,))
            self._next_expiry = now + min(1.0, self._ttl)

    def _held(self, db: sqlite3.Connection, scope: str, key: str) -> Receipt | None:
        row = db.execute(
            f"SELECT {_RECEIPT} FROM receipts WHERE scope = ? AND key = ? AND created_at >= ?",
            (scope, key, time.time() - self._ttl),
        ).fetchone()
        return None if row is None else _receipt(row)

    def _keep(self, db: sqlite3.Connection, r: Receipt) -> None:
        db.execute(
            f"INSERT OR REPLACE INTO receipts ({_RECEIPT}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (r.scope, r.key, r.fingerprint, r.session_id, r.version, r.payload, r.created_at),
        )

    def _append(self, sid: str, entry: HistoryEntry) -> None:
        """Add a history entry to the running batch's (``_insert_history`` writes them)."""
        self._history_rows.append((sid, entry.version, entry.time, entry.full, entry.brief))
        self._appended[sid] = entry.num_features

    def _insert_history(self, db: sqlite3.Connection) -> None:
        """The batch's pending history entries, in one statement."""
        rows, self._history_rows = self._history_rows, []
        if rows:
            db.execute(
                "INSERT OR REPLACE INTO history (session_id, version, time, full, brief, tier) "
                "VALUES " + ", ".join(["(?, ?, ?, ?, ?, 1)"] * len(rows)),
                [value for row in rows for value in row],
            )

    def _trim(self, db: sqlite3.Connection, sid: str, num_features: int) -> None:
        """Apply the history bounds: the entries that left the full window are kept brief
        (every ``every``-th version) or dropped, and the brief ones capped. Once per batch,
        after all of its entries: the rows kept are the same as after each entry."""
        p = self._policy
        leaving = (  # ?1 session, ?2 entries kept in full
            "SELECT version FROM history WHERE session_id = ?1 AND tier = 1 "
            "ORDER BY version DESC LIMIT -1 OFFSET ?2"
        )
        keep, briefed = p.recent_for(num_features), 0
        if p.older > 0:
            briefed = db.execute(
                "UPDATE history SET full = NULL, tier = 0 WHERE session_id = ?1 AND "
                f"version % ?3 = 0 AND version IN ({leaving})",
                (sid, keep, p.every),
            ).rowcount
        # The rest of the leaving entries (the briefed ones left tier 1 above).
        db.execute(
            f"DELETE FROM history WHERE session_id = ?1 AND version IN ({leaving})", (sid, keep)
        )
        if briefed > 0:  # more brief entries: drop the oldest beyond ``older``
            db.execute(
                "DELETE FROM history WHERE session_id = ? AND tier = 0 AND version < "
                "(SELECT version FROM history WHERE session_id = ? AND tier = 0 "
                "ORDER BY version DESC LIMIT 1 OFFSET ?)",
                (sid, sid, max(p.older - 1, 0)),
            )

    # --- the Store protocol --------------------------------------------------------------

    def read(self, session_id: str, owner: str | None = None) -> Session:
        with self._reading() as db:
            head = db.execute(
                "SELECT owner, version FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if head is None or (owner is not None and head[0] != owner):
                raise SessionNotFound(session_id)  # the state was not read: same cost
            cached = self._cache.get(session_id, head[1])
            if cached is not None:
                return cached
            row = db.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFound(session_id)
            return self._decode(row)

    def commit(
        self,
        session_id: str,
        expected_version: int,
        state: bncore.BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
    ) -> CommitResult:
        return self.submit_commit(
            session_id, expected_version, state, receipt=receipt, history=history
        ).result()

    def submit_commit(
        self,
        session_id: str,
        expected_version: int,
        state: bncore.BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
        after: PendingCommit | None = None,
    ) -> _Pending:
        """Queue the commit (see ``base.submit_commit``): the caller may release its session
        lock before it waits, so commits to one session share a transaction too."""
        self._ensure()
        blob = bncore.state_to_bytes(state)  # encoded before joining the writers' queue
        pending = _Pending(self)

        def write(db: sqlite3.Connection) -> CommitResult:
            if after is not None and not _landed(after):
                return Conflict(-1)  # built on a commit that did not land
            if receipt is not None:
                held = self._held(db, receipt.scope, receipt.key)
                if held is not None:
                    return Duplicate(held)
            now, version = time.time(), expected_version + 1
            # The version check and the write in one statement. A session's name, creation
            # time and owner never change (its id is never reused): when this process knows
            # them, the UPDATE returns no row (one SQLite step less, and one GIL hand-off).
            known = self._cache.get(session_id)
            update = (
                "UPDATE sessions SET state = ?, version = ?, updated_at = ? "
                "WHERE id = ? AND version = ?"
            )
            params = (blob, version, now, session_id, expected_version)
            if known is not None:
                applied = db.execute(update, params).rowcount == 1
                head = (known.name, known.created_at, known.owner)
            else:
                rows = db.execute(update + " RETURNING name, created_at, owner", params).fetchall()
                applied, head = bool(rows), rows[0] if rows else (None, 0.0, None)
            if not applied:
                found = db.execute(
                    "SELECT version FROM sessions WHERE id = ?", (session_id,)
                ).fetchone()
                if found is None:
                    raise SessionNotFound(session_id)
                return Conflict(int(found[0]) if isinstance(found[0], int) else -1)
            name, created_at, owner = head
            if receipt is not None:
                self._keep(db, receipt)
            if history is not None and self._policy.recent > 0:
                self._append(session_id, history)
            out = Committed(Session(session_id, state, version, created_at, now, name, owner))
            pending.tentative = out
            return out

        # Every refusal above comes before the UPDATE: no savepoint needed to undo it alone.
        pending.write = self._group.enqueue(write, checks_first=True)
        return pending

    def create(self, session: Session, *, receipt: Receipt | None = None) -> CommitResult:
        blob = bncore.state_to_bytes(session.state)
        s = session

        def write(db: sqlite3.Connection) -> CommitResult:
            if receipt is not None:
                held = self._held(db, receipt.scope, receipt.key)
                if held is not None:
                    return Duplicate(held)
                self._keep(db, receipt)
            db.execute(
                f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (s.id, s.name, s.version, blob, s.created_at, s.updated_at, s.owner),
            )
            return Committed(s)

        return self._write(write)

    def receipt(self, scope: str, key: str) -> Receipt | None:
        with self._reading() as db:
            return self._held(db, scope, key)  # (a receipt is decoded by its reader)

    def delete(self, session_id: str, owner: str | None = None, if_match: IfMatch = None) -> None:
        def write(db: sqlite3.Connection) -> None:
            head = db.execute(
                "SELECT owner, version FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if head is None or (owner is not None and head[0] != owner):
                raise SessionNotFound(session_id)
            check_version(head[1], if_match)
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            db.execute("DELETE FROM history WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM receipts WHERE session_id = ?", (session_id,))

        self._write(write)
        self._cache.drop(session_id)

    def history(self, session_id: str, limit: int, before: int | None = None) -> list[HistoryItem]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT version, full, brief FROM history WHERE session_id = ? AND version < ? "
                "ORDER BY version DESC LIMIT ?",
                (session_id, before if before is not None else 1 << 62, limit),
            ).fetchall()
        return [
            HistoryItem(v, full if full is not None else brief, full is not None)
            for v, full, brief in rows
        ]

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE id > ? AND (? IS NULL OR owner = ?) "
                "ORDER BY id LIMIT ?",
                (after or "", owner, owner, limit),
            ).fetchall()
            return [self._cache.get(r[0], r[2]) or self._decode(r) for r in rows]

    def ping(self) -> None:
        if self._ready and self._fault is None and self._wrote:
            with self._reading() as db:
                db.execute("SELECT 1 FROM sessions LIMIT 1").fetchall()
            return
        # A write failed last (or none was tried yet): only a write that succeeds says the
        # store serves (a file that opens read-only still answers reads).
        self._write(
            lambda db: db.execute("INSERT OR REPLACE INTO probe VALUES (1, ?)", (time.time(),))
        )

    def close(self) -> None:
        self._closed = True
        self._group.close()
        while True:
            try:
                self._drop(self._idle.get_nowait())
            except queue.Empty:
                break
        self._reset_writer()

    # --- decoded sessions -------------------------------------------------------------------

    def _decode(self, row: Row) -> Session:
        sid, name, version, blob, created, updated, owner = row
        try:
            if not isinstance(blob, bytes) or not isinstance(version, int):
                raise bncore.StateError(f"state is {type(blob).__name__}, not a record")
            state = bncore.state_from_bytes(blob, self._xp)
        except bncore.StateError as exc:
            raise CorruptRecord(
                f"session {sid!r}: the stored state cannot be read: {exc}"
            ) from None
        session = Session(sid, state, version, created, updated, name, owner)
        self._cache.put(session)
        return session


class _Pending:
    """A queued commit; ``tentative`` is its outcome inside the (unfinished) transaction."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.write: Write[sqlite3.Connection] | None = None
        self.tentative: CommitResult | None = None

    def result(self) -> CommitResult:
        assert self.write is not None
        out: CommitResult = self._store._group.wait(self.write)
        return out

    async def wait(self) -> CommitResult:
        assert self.write is not None
        out: CommitResult = await self._store._group.wait_async(self.write)
        return out


def _landed(pending: PendingCommit) -> bool:
    """Whether ``pending`` is applied, in a finished batch or earlier in the running one
    (called inside the writers' transaction: one of this store's is judged without waiting;
    any other is waited for, as ``base.landed`` does)."""
    if isinstance(pending, _Pending):
        w = pending.write
        failed = w is None or (w.finished and w.error is not None)
        return isinstance(pending.tentative, Committed) and not failed
    return landed(pending)


def _receipt(row: Row) -> Receipt:
    scope, key, fingerprint, session_id, version, payload, created_at = row
    if not isinstance(payload, bytes):
        raise CorruptRecord(f"the receipt of Idempotency-Key {key!r} cannot be read")
    return Receipt(scope, key, fingerprint, session_id, int(version), payload, float(created_at))
