"""The SQLite store's schema, versioned in ``PRAGMA user_version``, and its migrations.

Files written by any earlier bnaas open and work: version 0 is every file from before the
schema had a version (with or without the ``owner`` column); each step is idempotent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 2


def _sessions(db: sqlite3.Connection) -> None:
    """1: the sessions table, with the ``owner`` column (API keys) added where it is missing."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, name TEXT, "
        "version INTEGER NOT NULL, state BLOB NOT NULL, created_at REAL NOT NULL, "
        "updated_at REAL NOT NULL, owner TEXT)"
    )
    columns = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
    if "owner" not in columns:
        db.execute("ALTER TABLE sessions ADD COLUMN owner TEXT")


def _receipts_and_history(db: sqlite3.Connection) -> None:
    """2: O(C) idempotency receipts (the old table kept whole response bodies: dropped, so
    keys used before the upgrade are not recognised after it) and the per-fit history."""
    db.execute("DROP TABLE IF EXISTS idempotency")
    db.execute(
        "CREATE TABLE IF NOT EXISTS receipts (scope TEXT NOT NULL, key TEXT NOT NULL, "
        "fingerprint TEXT NOT NULL, session_id TEXT NOT NULL, version INTEGER NOT NULL, "
        "payload BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (scope, key))"
    )
    db.execute("CREATE INDEX IF NOT EXISTS receipts_age ON receipts (created_at)")
    db.execute("CREATE INDEX IF NOT EXISTS receipts_session ON receipts (session_id)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS history (session_id TEXT NOT NULL, "
        "version INTEGER NOT NULL, time REAL NOT NULL, full BLOB, brief BLOB NOT NULL, "
        "PRIMARY KEY (session_id, version)) WITHOUT ROWID"
    )
    db.execute("CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL)")


_STEPS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (1, _sessions),
    (2, _receipts_and_history),
]


class NewerSchema(RuntimeError):
    """The file was written by a newer bnaas: refuse rather than guess."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring the file to ``SCHEMA_VERSION`` inside the caller's write transaction; the
    version found. ``NewerSchema`` when the file is ahead of this code."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise NewerSchema(
            f"the database has schema version {found}; this bnaas knows up to {SCHEMA_VERSION}"
        )
    for version, step in _STEPS:
        if found < version:
            step(db)
    if found != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found
