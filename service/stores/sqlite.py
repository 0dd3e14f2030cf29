"""Embedded default store: one SQLite file in WAL mode, every acknowledged write fsynced.

Writers take the database lock up front (BEGIN IMMEDIATE), so concurrent fits from threads
and from several worker processes on one file are serialized and each applied exactly once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np
import orjson

import bncore
from service.errors import (
    SessionNotFound,
    StoreUnavailable,
)
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
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT,
    version INTEGER NOT NULL,
    state BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_at);
"""
_COLUMNS = "id, name, version, state, created_at, updated_at, owner"


class SQLiteStore:
    """Sessions as rows of compact binary state records (``bncore.state_to_bytes``)."""

    def __init__(self, path: Path, idempotency_ttl_s: float = 86400.0, xp: ModuleType = np) -> None:
        self._path = path
        self._ttl = idempotency_ttl_s
        self._xp = xp
        self._local = threading.local()
        self._cache: OrderedDict[str, Session] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._writer = threading.Lock()
        self._cache_size = 1024
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged fit survives power loss
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # SQLite admits one writer at a time and makes the others poll with sleeps of 1 ms and
        # more; queueing this process's writers on a lock first hands over without sleeping.
        with self._writer:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"sqlite store busy: {exc}") from None
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _session(
        self, row: tuple[str, str | None, int, bytes, float, float, str | None]
    ) -> Session:
        sid, name, version, blob, created, updated, owner = row
        cached = self._cache.get(sid)
        if cached is not None and cached.version == version:
            return cached
        state = bncore.state_from_bytes(blob, self._xp)
        session = Session(sid, state, version, created, updated, name, owner)
        self._remember_session(session)
        return session

    def _remember_session(self, session: Session) -> None:
        # Decoding a state costs more than reading its row: keep the latest decoded version of
        # recently used sessions. The row's version decides whether the entry is current.
        with self._cache_lock:
            self._cache[session.id] = session
            self._cache.move_to_end(session.id)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _replay(
        self, db: sqlite3.Connection, scope: str, idem: Idempotency | None
    ) -> Replay | None:
        if idem is None:
            return None
        row = db.execute(
            "SELECT fingerprint, status, media_type, headers, body FROM idempotency "
            "WHERE scope = ? AND key = ? AND created_at >= ?",
            (scope, idem.key, time.time() - self._ttl),
        ).fetchone()
        if row is None:
            return None
        check_fingerprint(idem, row[0])
        return Replay(row[1], row[2], row[4], orjson.loads(row[3]))

    def _remember(
        self, db: sqlite3.Connection, scope: str, idem: Idempotency | None, replay: Replay | None
    ) -> None:
        if idem is None or replay is None:
            return
        now = time.time()
        db.execute("DELETE FROM idempotency WHERE created_at < ?", (now - self._ttl,))
        db.execute(
            "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                scope,
                idem.key,
                idem.fingerprint,
                replay.status,
                replay.media_type,
                orjson.dumps(replay.headers).decode(),
                replay.body,
                now,
            ),
        )

    def create(
        self,
        session: Session,
        *,
        idem: Idempotency | None = None,
        render: Render[None] | None = None,
    ) -> Session | Replay:
        with self._write() as db:
            replay = self._replay(db, _CREATE, idem)
            if replay is not None:
                return replay
            db.execute(
                f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.name,
                    session.version,
                    bncore.state_to_bytes(session.state),
                    session.created_at,
                    session.updated_at,
                    session.owner,
                ),
            )
            self._remember(db, _CREATE, idem, render(session, None) if render and idem else None)
        return session

    def get(self, session_id: str) -> Session:
        row = (
            self._db()
            .execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
            .fetchone()
        )
        if row is None:
            raise SessionNotFound(session_id)
        return self._session(row)

    def list(self, limit: int, after: str | None, owner: str | None = None) -> list[Session]:
        rows = (
            self._db()
            .execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE id > ? AND (? IS NULL OR owner = ?) "
                "ORDER BY id LIMIT ?",
                (after or "", owner, owner, limit),
            )
            .fetchall()
        )
        return [self._session(r) for r in rows]

    def delete(self, session_id: str, if_match: IfMatch = None) -> None:
        with self._write() as db:
            row = db.execute("SELECT version FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise SessionNotFound(session_id)
            check_version(row[0], if_match)
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            db.execute("DELETE FROM idempotency WHERE scope = ?", (session_id,))
        with self._cache_lock:
            self._cache.pop(session_id, None)

    def update(
        self,
        session_id: str,
        fn: Change[R],
        *,
        if_match: IfMatch = None,
        idem: Idempotency | None = None,
        render: Render[R] | None = None,
    ) -> tuple[Session, R] | Replay:
        with self._write() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise SessionNotFound(session_id)
            replay = self._replay(db, session_id, idem)
            if replay is not None:
                return replay
            current = self._session(row)
            check_version(current.version, if_match)
            new_state, result = fn(current)
            if new_state is not None:
                current = replace(
                    current, state=new_state, version=current.version + 1, updated_at=time.time()
                )
                db.execute(
                    "UPDATE sessions SET state = ?, version = ?, updated_at = ? WHERE id = ?",
                    (
                        bncore.state_to_bytes(new_state),
                        current.version,
                        current.updated_at,
                        session_id,
                    ),
                )
            self._remember(
                db, session_id, idem, render(current, result) if render and idem else None
            )
        self._remember_session(current)  # committed: later reads skip decoding this version
        return current, result

    def ping(self) -> None:
        try:
            self._db().execute("SELECT 1 FROM sessions LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite store at {self._path} unavailable: {exc}") from None

    def close(self) -> None:
        with self._all_lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()
