"""Store conformance: every engine behaves alike behind the ``Store`` protocol.

Engines register a factory in ``STORES`` (``(request, options) -> Store``); a factory may use
fixtures through ``request.getfixturevalue`` (a Redis server, a temporary directory).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import bncore
from service.commit import Commits
from service.errors import IdempotencyMismatch, PreconditionFailed, SessionNotFound
from service.records import FitRecord
from service.stores import MemoryStore, SQLiteStore, Store, check_url, open_store
from service.stores.base import (
    Committed,
    Conflict,
    Duplicate,
    HistoryEntry,
    HistoryPolicy,
    Idempotency,
    Receipt,
    Session,
    StoreOptions,
    create_scope,
)

Factory = Callable[[pytest.FixtureRequest, StoreOptions], Store]


def _memory(request: pytest.FixtureRequest, options: StoreOptions) -> Store:
    return MemoryStore(options)


def _sqlite(request: pytest.FixtureRequest, options: StoreOptions) -> Store:
    tmp: Path = request.getfixturevalue("tmp_path")
    return SQLiteStore(tmp / "s.db", options)


def _redis(request: pytest.FixtureRequest, options: StoreOptions) -> Store:
    from service.stores.redis import RedisStore  # redis-py is an optional extra

    return RedisStore(str(request.getfixturevalue("redis_url")), options)  # a real redis-server


STORES: dict[str, Factory] = {"memory": _memory, "sqlite": _sqlite, "redis": _redis}
MARKS = {"redis": pytest.mark.redis}

Make = Callable[..., Store]


@pytest.fixture(params=[pytest.param(n, marks=MARKS.get(n, ())) for n in sorted(STORES)])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """Opens the parametrized engine with the given options (closed after the test)."""
    opened: list[Store] = []

    def make(options: StoreOptions | None = None) -> Store:
        s = STORES[request.param](request, options or StoreOptions())
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(make: Make) -> Store:
    return make()


def new_session(sid: str = "s1", owner: str | None = None, c: int = 2) -> Session:
    now = time.time()
    return Session(sid, bncore.initial_state(bncore.BNConfig(c)), 1, now, now, "n", owner)


X = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)


def fitted(state: bncore.BNState) -> bncore.BNState:
    return bncore.apply_batch(state, bncore.batch_stats(state, X))


def receipt(key: str = "k", scope: str = "s1", fp: str = "fp", version: int = 2) -> Receipt:
    return Receipt(scope, key, fp, "s1", version, b"payload", time.time())


def entry(version: int) -> HistoryEntry:
    return HistoryEntry(version, time.time(), b"full%d" % version, b"brief%d" % version, 2)


# --- sessions ------------------------------------------------------------------------------


def test_create_then_read_returns_the_session(store: Store) -> None:
    out = store.create(new_session())
    assert isinstance(out, Committed)
    got = store.read("s1")
    assert (got.id, got.version, got.name) == ("s1", 1, "n")
    assert got.state.num_batches_tracked == 0


def test_unknown_session_is_not_found(store: Store) -> None:
    with pytest.raises(SessionNotFound):
        store.read("x")
    with pytest.raises(SessionNotFound):
        store.commit("x", 1, new_session().state)
    with pytest.raises(SessionNotFound):
        store.delete("x")


def test_list_orders_by_id_and_pages_after_an_id(store: Store) -> None:
    for sid in ("b", "a", "c"):
        store.create(new_session(sid))
    assert [s.id for s in store.list(2, None)] == ["a", "b"]
    assert [s.id for s in store.list(10, "b")] == ["c"]
    store.delete("b")
    assert [s.id for s in store.list(10, None)] == ["a", "c"]


def test_delete_with_a_stale_if_match_is_precondition_failed(store: Store) -> None:
    store.create(new_session())
    with pytest.raises(PreconditionFailed):
        store.delete("s1", if_match=7)
    store.delete("s1", if_match=1)
    with pytest.raises(SessionNotFound):
        store.read("s1")


# --- owners --------------------------------------------------------------------------------


def test_another_owners_session_answers_like_a_missing_one(store: Store) -> None:
    store.create(new_session("mine", owner="alice"))
    store.create(new_session("theirs", owner="bob"))
    assert store.read("mine", "alice").owner == "alice"
    with pytest.raises(SessionNotFound) as foreign:
        store.read("theirs", "alice")
    with pytest.raises(SessionNotFound) as missing:
        store.read("nothing", "alice")
    assert str(foreign.value).replace("theirs", "X") == str(missing.value).replace("nothing", "X")
    assert [s.id for s in store.list(10, None, "alice")] == ["mine"]
    assert {s.id for s in store.list(10, None)} == {"mine", "theirs"}
    with pytest.raises(SessionNotFound):
        store.delete("theirs", "alice")
    assert store.read("theirs").owner == "bob"


# --- commit --------------------------------------------------------------------------------


def test_commit_at_the_expected_version_bumps_it_and_persists_the_state(store: Store) -> None:
    store.create(new_session())
    out = store.commit("s1", 1, fitted(store.read("s1").state))
    assert isinstance(out, Committed)
    assert out.session.version == 2
    assert out.session.name == "n"
    got = store.read("s1")
    assert got.version == 2
    assert got.state.num_batches_tracked == 1


def test_commit_at_a_stale_version_is_a_conflict_and_changes_nothing(store: Store) -> None:
    store.create(new_session())
    store.commit("s1", 1, fitted(store.read("s1").state))
    out = store.commit("s1", 1, fitted(store.read("s1").state), receipt=receipt())
    assert isinstance(out, Conflict) and out.version == 2  # Redis: with the session
    assert store.read("s1").version == 2
    assert store.receipt("s1", "k") is None


def test_a_held_key_is_a_duplicate_and_writes_nothing(store: Store) -> None:
    store.create(new_session())
    first = receipt()
    out = store.commit("s1", 1, fitted(store.read("s1").state), receipt=first)
    assert isinstance(out, Committed)
    assert store.receipt("s1", "k") == first
    again = store.commit("s1", 2, fitted(store.read("s1").state), receipt=receipt(fp="other"))
    assert again == Duplicate(first)
    assert store.read("s1").version == 2
    assert store.receipt("s1", "other-key") is None


def test_create_with_a_held_key_is_a_duplicate(store: Store) -> None:
    scope = create_scope("alice")
    r = Receipt(scope, "k", "fp", "s1", 1, b"p", time.time())
    assert isinstance(store.create(new_session(owner="alice"), receipt=r), Committed)
    r2 = Receipt(scope, "k", "fp", "s2", 1, b"p", time.time())
    assert store.create(new_session("s2", owner="alice"), receipt=r2) == Duplicate(r)
    with pytest.raises(SessionNotFound):
        store.read("s2")
    assert store.receipt(create_scope("bob"), "k") is None


def test_deleting_a_session_drops_the_receipts_that_name_it(store: Store) -> None:
    created = Receipt(create_scope(None), "c", "fp", "s1", 1, b"p", time.time())
    store.create(new_session(), receipt=created)
    store.commit("s1", 1, fitted(store.read("s1").state), receipt=receipt(), history=entry(2))
    store.delete("s1")
    assert store.receipt(create_scope(None), "c") is None
    assert store.receipt("s1", "k") is None
    store.create(new_session())  # the same id again starts from nothing
    assert store.history("s1", 10) == []


def test_receipts_expire_after_the_ttl(make: Make) -> None:
    store = make(StoreOptions(idempotency_ttl_s=0.2))
    store.create(new_session())
    r = receipt()
    store.commit("s1", 1, fitted(store.read("s1").state), receipt=r)
    assert store.receipt("s1", "k") == r
    time.sleep(0.3)
    assert store.receipt("s1", "k") is None
    later = receipt()
    out = store.commit("s1", 2, fitted(store.read("s1").state), receipt=later)
    assert isinstance(out, Committed)
    assert store.receipt("s1", "k") == later


# --- history -------------------------------------------------------------------------------


def _history_store(make: Make) -> Store:
    store = make(StoreOptions(history=HistoryPolicy(recent=3, every=2, older=2)))
    store.create(new_session())
    for v in range(1, 11):  # versions 2..11
        state = fitted(store.read("s1").state)
        assert isinstance(store.commit("s1", v, state, history=entry(v + 1)), Committed)
    return store


def test_history_keeps_recent_fits_full_and_older_ones_downsampled(make: Make) -> None:
    store = _history_store(make)
    items = store.history("s1", 100)
    assert [(i.version, i.full) for i in items] == [
        (11, True),
        (10, True),
        (9, True),
        (8, False),
        (6, False),
    ]
    assert items[0].data == b"full11"
    assert items[3].data == b"brief8"


def test_history_pages_newest_first_by_version(make: Make) -> None:
    store = _history_store(make)
    assert [i.version for i in store.history("s1", 2)] == [11, 10]
    assert [i.version for i in store.history("s1", 2, before=10)] == [9, 8]
    assert [i.version for i in store.history("s1", 2, before=8)] == [6]
    assert store.history("s1", 2, before=6) == []
    assert store.history("unknown", 5) == []


def test_wide_sessions_keep_fewer_full_entries(make: Make) -> None:
    store = make(StoreOptions(history=HistoryPolicy(recent=10, every=1, older=5, max_values=20)))
    store.create(new_session())
    for v in range(1, 6):
        e = HistoryEntry(v + 1, time.time(), b"f", b"b", 2)  # 5 * 2 values per full entry
        store.commit("s1", v, fitted(store.read("s1").state), history=e)
    assert [i.full for i in store.history("s1", 10)] == [True, True, False, False, False]


# --- the commit loop on every store --------------------------------------------------------


def _fit(commits: Commits, store: Store, idem: Idempotency | None = None) -> FitRecord:
    return commits.fit(store, store.read("s1"), X, idem=idem).record


def test_concurrent_fits_on_one_session_are_each_applied_once(store: Store) -> None:
    store.create(new_session())
    # Two commit loops stand for two processes: their commits conflict and are retried.
    loops = [Commits(retries=1000), Commits(retries=1000)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(15):
                _fit(loops[i % 2], store)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    session = store.read("s1")
    assert session.state.num_batches_tracked == 120
    assert session.version == 121
    np.testing.assert_array_equal(session.state.population.count, [240, 240])
    assert len(store.history("s1", 1000)) > 0


def test_a_retried_fit_is_answered_from_its_receipt(store: Store) -> None:
    store.create(new_session())
    commits = Commits()
    idem = Idempotency("k", "fp")
    first = commits.fit(store, store.read("s1"), X, idem=idem)
    again = commits.fit(store, store.read("s1"), X, idem=idem)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.record.version == first.record.version == 2
    assert first.output is not None and again.output is not None
    assert first.output.tobytes() == again.output.tobytes()
    assert store.read("s1").state.num_batches_tracked == 1
    with pytest.raises(IdempotencyMismatch):
        commits.fit(store, store.read("s1"), X, idem=Idempotency("k", "other"))


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    s = open_store(f"sqlite:///{tmp_path}/x/y.db")
    assert isinstance(s, SQLiteStore)
    s.close()
    with pytest.raises(ValueError, match="unknown store URL"):
        open_store("postgres://x")
    with pytest.raises(ValueError, match="needs a path"):
        open_store("sqlite://")


def test_the_memory_store_refuses_more_than_one_worker() -> None:
    with pytest.raises(ValueError, match="one process"):
        check_url("memory://", workers=2)
    with pytest.raises(ValueError, match="one process"):
        MemoryStore(StoreOptions(workers=2))
