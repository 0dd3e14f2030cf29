"""What only the SQLite store has: files from older versions, a bounded set of connections,
group commit, and records that cannot be decoded."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import bncore
from service.app import create_app
from service.commit import Commits
from service.settings import Settings
from service.stores import SQLiteStore
from service.stores.base import Committed, CorruptRecord, Session, StoreOptions
from service.stores.sqlite_schema import SCHEMA_VERSION, NewerSchema

# The schema of the first release (service/stores/sqlite.py at 3b78319): no owner column, and
# idempotency records that kept whole response bodies.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, name TEXT, version INTEGER NOT NULL, state BLOB NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
    media_type TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_at);
"""
X = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)


def old_file(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    state = bncore.state_to_bytes(bncore.initial_state(bncore.BNConfig(2)))
    db.execute("INSERT INTO sessions VALUES ('old', 'legacy', 1, ?, 1.0, 1.0)", (state,))
    db.commit()
    db.close()


def fit(store: SQLiteStore, sid: str) -> None:
    Commits().fit(store, store.read(sid), X, output=False)


def test_a_file_from_before_the_owner_column_opens_and_works(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path)
    store = SQLiteStore(path)
    try:
        old = store.read("old")
        assert (old.name, old.owner, old.version) == ("legacy", None, 1)
        fit(store, "old")
        assert store.read("old").state.num_batches_tracked == 1
        now = time.time()
        state = bncore.initial_state(bncore.BNConfig(2))
        store.create(Session("new", state, 1, now, now, None, "alice"))
        assert store.read("new", "alice").owner == "alice"
        assert len(store.history("old", 10)) == 1
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_a_file_from_a_newer_bnaas_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(NewerSchema, match="schema version"):
        SQLiteStore(path)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_file_descriptors_stay_flat_over_burst_and_idle_cycles(tmp_path: Path) -> None:
    pool = 4
    store = SQLiteStore(tmp_path / "fd.db", StoreOptions(pool_size=pool))
    now = time.time()
    for i in range(8):
        store.create(Session(f"s{i}", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    start = open_fds()
    counts = []
    for cycle in range(20):
        # Fresh threads every burst (the server's pool retires idle ones the same way).
        threads = [
            threading.Thread(target=fit, args=(store, f"s{(cycle + i) % 8}")) for i in range(12)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counts.append(open_fds())
    store.close()
    # Each connection holds the database, its WAL and its shared-memory file.
    assert max(counts) <= start + 3 * (pool + 1)
    assert counts[-1] == counts[9]


def test_commits_queued_behind_a_transaction_share_the_next_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "group.db")
    now = time.time()
    for i in range(16):
        store.create(Session(f"s{i}", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    before = (store._group.batches, store._group.writes)

    def worker(sid: str) -> None:
        for _ in range(10):
            fit(store, sid)

    threads = [threading.Thread(target=worker, args=(f"s{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = store._group.batches - before[0]
    writes = store._group.writes - before[1]
    assert writes == 160
    assert batches < writes
    assert all(store.read(f"s{i}").state.num_batches_tracked == 10 for i in range(16))
    store.close()


def test_a_garbage_state_record_is_a_corrupt_record_not_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    store = SQLiteStore(path)
    now = time.time()
    store.create(Session("bad", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE sessions SET state = ?, version = 2 WHERE id = 'bad'", (b"BNS\x01garbage",))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    with pytest.raises(CorruptRecord) as exc:
        store.read("bad")
    assert exc.value.status == 503
    store.close()


@pytest.fixture
def corrupt_client(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    path = tmp_path / "http.db"
    with TestClient(create_app(Settings(store=f"sqlite:///{path}", device="cpu"))) as c:
        sid = c.post("/v1/sessions", json={"num_features": 2}).json()["id"]
        db = sqlite3.connect(path)
        db.execute("UPDATE sessions SET state = x'00ff', version = 5 WHERE id = ?", (sid,))
        db.commit()
        db.close()
        yield c, sid


def test_a_garbage_state_record_answers_503_with_retry_after(
    corrupt_client: tuple[TestClient, str],
) -> None:
    client, sid = corrupt_client
    for method, url, body in (
        ("GET", f"/v1/sessions/{sid}", None),
        ("POST", f"/v1/sessions/{sid}/fit", {"data": [[1.0, 2.0], [3.0, 4.0]]}),
        ("GET", f"/v1/sessions/{sid}/stats", None),
    ):
        r = client.request(method, url, json=body)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["type"] == "urn:bnaas:problem:store-corrupt"
    other = client.post("/v1/sessions", json={"num_features": 2})
    assert other.status_code == 201
    assert client.get("/readyz").status_code == 200  # the store serves the other sessions


def test_a_committed_write_is_in_the_file_when_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    store = SQLiteStore(path)
    now = time.time()
    out = store.create(Session("d", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    assert isinstance(out, Committed)
    fit(store, "d")
    # A separate connection (another process would see the same) reads the acknowledged fit.
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM sessions WHERE id = 'd'").fetchone()[0] == 2
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    store.close()
