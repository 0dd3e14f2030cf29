"""Store conformance: both engines behave alike; SQLite persists and serializes writers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import bncore
from service.errors import IdempotencyMismatch, PreconditionFailed, SessionNotFound
from service.stores import MemoryStore, SQLiteStore, Store, open_store
from service.stores.base import Idempotency, Replay, Session


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    yield s
    s.close()


def new_session(sid: str = "s1") -> Session:
    now = time.time()
    return Session(sid, bncore.initial_state(bncore.BNConfig(2)), 1, now, now)


def fit_once(session: Session) -> tuple[bncore.BNState, int]:
    state, _ = bncore.fit(
        session.state, np.array([[1.0, 2.0], [3.0, 5.0]], np.float32), output=False
    )
    return state, state.num_batches_tracked


def test_update_bumps_version_and_persists_the_state(store: Store) -> None:
    store.create(new_session())
    out = store.update("s1", fit_once)
    assert not isinstance(out, Replay)
    assert out[0].version == 2
    assert store.get("s1").state.num_batches_tracked == 1


def test_update_returning_no_state_changes_nothing(store: Store) -> None:
    store.create(new_session())
    store.update("s1", lambda s: (None, 0))
    assert store.get("s1").version == 1


def test_failing_update_changes_nothing(store: Store) -> None:
    store.create(new_session())

    def boom(session: Session) -> tuple[bncore.BNState, int]:
        raise bncore.ShapeError("bad")

    with pytest.raises(bncore.ShapeError):
        store.update("s1", boom)
    assert store.get("s1").version == 1


def test_if_match_mismatch_is_precondition_failed(store: Store) -> None:
    store.create(new_session())
    with pytest.raises(PreconditionFailed):
        store.update("s1", fit_once, if_match=5)
    store.update("s1", fit_once, if_match=1)


def test_unknown_session_raises_not_found(store: Store) -> None:
    with pytest.raises(SessionNotFound):
        store.get("x")
    with pytest.raises(SessionNotFound):
        store.update("x", fit_once)
    with pytest.raises(SessionNotFound):
        store.delete("x")


def test_idempotency_replays_and_rejects_other_fingerprints(store: Store) -> None:
    store.create(new_session())
    idem = Idempotency("k", "fp1")

    def render(s: Session, r: int) -> Replay:
        return Replay(200, "text/plain", str(r).encode(), {"ETag": str(s.version)})

    first = store.update("s1", fit_once, idem=idem, render=render)
    again = store.update("s1", fit_once, idem=idem, render=render)
    assert isinstance(again, Replay)
    assert again.body == b"1"
    assert again.headers == {"ETag": "2"}
    assert not isinstance(first, Replay)
    assert store.get("s1").state.num_batches_tracked == 1
    with pytest.raises(IdempotencyMismatch):
        store.update("s1", fit_once, idem=Idempotency("k", "fp2"), render=render)


def test_idempotency_records_expire(tmp_path: Path) -> None:
    for store in (MemoryStore(0.05), SQLiteStore(tmp_path / "t.db", 0.05)):
        store.create(new_session())
        render = lambda s, r: Replay(200, "text/plain", b"x")  # noqa: E731
        store.update("s1", fit_once, idem=Idempotency("k", "fp"), render=render)
        time.sleep(0.1)
        out = store.update("s1", fit_once, idem=Idempotency("k", "fp"), render=render)
        assert not isinstance(out, Replay)
        assert store.get("s1").state.num_batches_tracked == 2


def test_list_and_delete(store: Store) -> None:
    for sid in ("b", "a", "c"):
        store.create(new_session(sid))
    assert [s.id for s in store.list(2, None)] == ["a", "b"]
    assert [s.id for s in store.list(10, "b")] == ["c"]
    store.delete("b")
    assert [s.id for s in store.list(10, None)] == ["a", "c"]


def test_concurrent_updates_from_threads_are_each_applied_once(store: Store) -> None:
    store.create(new_session())
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                store.update("s1", fit_once)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    session = store.get("s1")
    assert session.state.num_batches_tracked == 200
    assert session.version == 201
    np.testing.assert_array_equal(session.state.population.count, [400, 400])


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "persist.db"
    s = SQLiteStore(path)
    s.create(new_session())
    s.update("s1", fit_once)
    s.close()
    again = SQLiteStore(path)
    assert again.get("s1").state.num_batches_tracked == 1
    again.close()


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    s = open_store(f"sqlite:///{tmp_path}/x/y.db")
    assert isinstance(s, SQLiteStore)
    s.close()
    with pytest.raises(ValueError, match="unknown store URL"):
        open_store("postgres://x")
    with pytest.raises(ValueError, match="needs a path"):
        open_store("sqlite://")
