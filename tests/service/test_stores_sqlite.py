"""What only the SQLite store has: files from older versions, a bounded set of connections,
group commit, and records that cannot be decoded."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import bncore
from service.app import create_app
from service.commit import Commits
from service.settings import Settings
from service.stores import SQLiteStore
from service.stores.base import (
    Committed,
    Conflict,
    CorruptRecord,
    HistoryEntry,
    HistoryPolicy,
    Session,
    StoreOptions,
)
from service.stores.memory import MemoryStore
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


@contextmanager
def writers_queued(path: Path, store: SQLiteStore, at_least: int = 2) -> Iterator[None]:
    """Hold the database's write lock from another connection until ``at_least`` commits wait
    in the store's queue, so that the next transaction is shared whatever the scheduling (the
    wait is for readiness, bounded; nothing here is a timing assertion)."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
        deadline = time.monotonic() + 10
        while len(store._group._queue) < at_least and time.monotonic() < deadline:
            time.sleep(0.001)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


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
    gc.collect()  # descriptors of earlier tests' objects are not this store's
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
    # At most pool_size readers and one writer, each with the database, its WAL and (shared
    # or not) its shared-memory file, however many threads came and went: flat once the
    # pool is full, where the old thread-local connections grew by ~14 per cycle.
    assert max(counts) <= start + 3 * (pool + 1), counts


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
    with writers_queued(tmp_path / "group.db", store):
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


class Counts:
    """CommitEvents that count."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.retries = self.replays = 0
        self._lock = threading.Lock()

    def observe_commit(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def observe_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def observe_replay(self) -> None:
        with self._lock:
            self.replays += 1


def test_fits_to_one_hot_session_share_transactions_without_conflicts(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hot.db")
    now = time.time()
    store.create(Session("hot", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    counts = Counts()
    commits = Commits(counts)  # one process: the next fit combines on the pending state
    before = (store._group.batches, store._group.writes)

    def worker() -> None:
        for _ in range(10):
            commits.fit(store, store.read("hot"), X, output=False)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    with writers_queued(tmp_path / "hot.db", store):
        for t in threads:
            t.start()
    for t in threads:
        t.join()
    assert counts.outcomes == {"committed": 160}
    assert counts.retries == 0
    assert store._group.writes - before[1] == 160
    assert store._group.batches - before[0] < 160
    hot = store.read("hot")
    assert (hot.version, hot.state.num_batches_tracked) == (161, 160)
    np.testing.assert_array_equal(hot.state.population.count, [320, 320])
    assert commits.in_flight() == 0  # the per-session locks are gone once idle
    store.close()


def test_shared_batches_store_what_one_commit_at_a_time_stores(tmp_path: Path) -> None:
    """A batch inserts its history entries in one statement and trims once: what the file
    holds (read by a fresh store, no cache) is what the memory store holds after the same
    commits one at a time."""
    policy = HistoryPolicy(recent=3, every=2, older=2)
    sqlite_store = SQLiteStore(tmp_path / "h.db", StoreOptions(history=policy))
    memory = MemoryStore(StoreOptions(history=policy))
    now = time.time()
    state = bncore.initial_state(bncore.BNConfig(2))
    for store in (sqlite_store, memory):
        store.create(Session("h", state, 1, now, now, "named", "owner-1"))
    version = 1
    for size in (1, 5, 2, 7, 3):
        batches = sqlite_store._group.batches
        pending, last = [], None
        for _ in range(size):  # queued, not waited for: the first wait runs them all at once
            v = version + 1
            state = dataclasses.replace(state, num_batches_tracked=v)  # a state per commit
            entry = HistoryEntry(v, now + v, b"full%d" % v, b"brief%d" % v, 2)
            last = sqlite_store.submit_commit("h", version, state, history=entry, after=last)
            pending.append(last)
            assert isinstance(memory.commit("h", version, state, history=entry), Committed)
            version = v
        assert all(isinstance(p.result(), Committed) for p in pending)
        assert sqlite_store._group.batches == batches + 1
    sqlite_store.close()
    fresh = SQLiteStore(tmp_path / "h.db", StoreOptions(history=policy))
    # A store that has not read the session yet learns its name and owner from the UPDATE.
    cold = fresh.commit("h", version, state)
    assert isinstance(cold, Committed)
    assert (cold.session.name, cold.session.owner, cold.session.version) == ("named", "owner-1", 20)
    assert isinstance(memory.commit("h", version, state), Committed)
    stored, expected = fresh.read("h"), memory.read("h")
    assert (stored.version, stored.name, stored.owner) == (20, "named", "owner-1")
    assert stored.version == expected.version
    assert stored.state.num_batches_tracked == expected.state.num_batches_tracked == 19
    kept = fresh.history("h", 100)
    assert kept == memory.history("h", 100)
    assert [(i.version, i.full) for i in kept] == [
        (19, True),
        (18, True),
        (17, True),
        (16, False),
        (14, False),
    ]
    assert all(
        (c.session.name, c.session.owner) == ("named", "owner-1")
        for c in (p.result() for p in pending)
        if isinstance(c, Committed)
    )
    fresh.close()


def test_a_commit_built_on_one_that_did_not_land_is_a_conflict(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chain.db")
    now = time.time()
    state = bncore.initial_state(bncore.BNConfig(2))
    store.create(Session("c", state, 1, now, now))
    # Another writer (another process) moves the session to version 2 first.
    assert isinstance(store.commit("c", 1, state), Committed)
    first = store.submit_commit("c", 1, state)  # stale: will conflict
    second = store.submit_commit("c", 2, state, after=first)  # predicted on the first
    assert isinstance(first.result(), Conflict)
    assert isinstance(second.result(), Conflict)  # version 2 matches, but not its base
    assert store.read("c").version == 2
    store.close()


def test_fits_awaited_on_an_event_loop_share_batches_that_never_run_on_the_loop(
    tmp_path: Path,
) -> None:
    """``fit_async`` (the hot route's small fits) queues its commit and awaits it: the batch
    runs in another thread (the loop never waits for an fsync), and awaited and blocking
    fits to one session share transactions and land exactly once each."""
    store = SQLiteStore(tmp_path / "async.db")
    now = time.time()
    store.create(Session("hot", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    counts = Counts()
    commits = Commits(counts)
    batch_threads: set[int] = set()
    run = store._run

    def recording_run(batch: Any) -> None:
        batch_threads.add(threading.get_ident())
        run(batch)

    store._run = recording_run  # type: ignore[method-assign]
    store._group._runner = recording_run
    before = (store._group.batches, store._group.writes)
    loop_thread: list[int] = []

    async def on_loop() -> None:
        loop_thread.append(threading.get_ident())

        async def one() -> None:
            for _ in range(10):
                await commits.fit_async(store, store.read("hot"), X, output=False)

        await asyncio.gather(*(one() for _ in range(8)))

    def blocking() -> None:
        for _ in range(10):
            commits.fit(store, store.read("hot"), X, output=False)

    threads = [threading.Thread(target=blocking) for _ in range(4)]
    with writers_queued(tmp_path / "async.db", store, at_least=1):
        for t in threads:
            t.start()
        loop = threading.Thread(target=asyncio.run, args=(on_loop(),))
        loop.start()
    loop.join()
    for t in threads:
        t.join()
    assert counts.outcomes == {"committed": 120}
    assert loop_thread and loop_thread[0] not in batch_threads
    assert store._group.writes - before[1] == 120
    assert store._group.batches - before[0] < 120
    hot = store.read("hot")
    assert (hot.version, hot.state.num_batches_tracked) == (121, 120)
    np.testing.assert_array_equal(hot.state.population.count, [240, 240])
    assert commits.in_flight() == 0
    store.close()


def test_pipelined_commits_do_not_keep_each_other_alive(tmp_path: Path) -> None:
    """A commit built on a pending one holds it until it runs; a finished one lets go. Else a
    session that is never idle (its flight always held) keeps every commit it ever made."""
    store = SQLiteStore(tmp_path / "chain.db")
    now = time.time()
    store.create(Session("hot", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    commits = Commits()
    flight = commits._flights.enter("hot")  # a busy session: its prediction is never dropped
    try:
        for _ in range(200):
            commits.fit(store, commits.read(store, "hot"), X, output=False)
        gc.collect()
        alive = [o for o in gc.get_objects() if type(o).__name__ == "_Pending"]
        assert len(alive) <= 2, f"{len(alive)} finished commits still reachable"
    finally:
        commits._flights.leave("hot", flight)
    assert store.read("hot").state.num_batches_tracked == 200
    store.close()


def test_closing_the_store_ends_its_group_commit_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "close.db")
    now = time.time()
    store.create(Session("s", bncore.initial_state(bncore.BNConfig(2)), 1, now, now))
    asyncio.run(Commits().fit_async(store, store.read("s"), X, output=False))
    helper = store._group._helper
    assert helper is not None and helper.is_alive()  # the awaited commit ran there
    store.close()
    helper.join(10)
    assert not helper.is_alive()


def test_an_sqlite_too_old_for_the_store_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(RuntimeError, match=r"needs SQLite 3\.35\.0 or newer"):
        SQLiteStore(tmp_path / "old.db")
    assert not (tmp_path / "old.db").exists()  # refused before touching the file


def test_a_batch_cut_short_by_a_base_exception_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """A write that raises what no write may raise (here a BaseException, as an interrupt
    would) fails its batch; the next batch finds no transaction left open by it."""

    class Interrupted(BaseException):
        pass

    store = SQLiteStore(tmp_path / "cut.db")
    now = time.time()
    state = bncore.initial_state(bncore.BNConfig(2))
    store.create(Session("a", state, 1, now, now))

    def interrupted(db: sqlite3.Connection) -> None:
        db.execute("UPDATE sessions SET version = 99 WHERE id = 'a'")
        raise Interrupted

    with pytest.raises(Interrupted):
        store._write(interrupted)
    store.create(Session("b", state, 1, now, now))  # not a 503
    assert store.read("a").version == 1  # the interrupted batch's change was rolled back
    assert store.read("b").version == 1
    store.close()
