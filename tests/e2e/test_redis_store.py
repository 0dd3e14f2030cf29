"""What only the Redis store has to prove, against a real ``redis-server``: one Function call
per commit that is safe to resend, the library reloaded when Redis lost it, one Cluster slot
per session, faults as 503 and recovery without a new store object. (What every store does is
in the conformance suite, tests/service/test_stores.py.)"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.crc import key_slot

import bncore
from service.errors import SessionNotFound, StoreUnavailable
from service.stores import open_store
from service.stores import redis as redis_store
from service.stores.base import (
    Committed,
    Conflict,
    Duplicate,
    HistoryEntry,
    HistoryPolicy,
    Receipt,
    Session,
    StoreOptions,
    create_scope,
)
from service.stores.redis import RedisStore, receipt_key, session_keys
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]

X = np.array([[1.0, 2.0], [3.0, 5.0]])


def new_session(sid: str = "s1", owner: str | None = None) -> Session:
    now = time.time()
    state = bncore.initial_state(bncore.BNConfig(2, dtype="float64"))
    return Session(sid, state, 1, now, now, None, owner)


def fitted(session: Session) -> bncore.BNState:
    state, _ = bncore.fit(session.state, X, output=False)
    return state


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = RedisStore(redis_url, StoreOptions(timeout_s=1.0))
    yield s
    s.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop and restart."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def test_open_store_opens_redis_urls(redis_url: str) -> None:
    s = open_store(redis_url)
    assert isinstance(s, RedisStore)
    s.ping()
    s.close()


def test_rediss_url_uses_tls_connections() -> None:
    s = RedisStore("rediss://:secret@127.0.0.1:1/0", StoreOptions(timeout_s=0.2))
    pool = s._redis.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["password"] == "secret"
    assert "secret" not in s._where  # error messages never carry the password
    s.close()


def test_password_in_the_url_authenticates(own_redis: RedisServer) -> None:
    assert own_redis.command("CONFIG", "SET", "requirepass", "s3cret") == b"+OK"
    url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/0"
    good = RedisStore(url, StoreOptions(timeout_s=1.0))
    good.create(new_session())
    assert good.read("s1").version == 1
    bad = RedisStore(url.replace("s3cret", "wrong"), StoreOptions(timeout_s=1.0))
    with pytest.raises(StoreUnavailable):
        bad.ping()
    good.close()
    bad.close()


def test_keys_of_one_session_share_one_cluster_slot() -> None:
    keys = [*session_keys("abc"), receipt_key("abc", "key-1", session_scoped=True)]
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_a_resent_commit_is_applied_once(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reply of a commit can be lost after Redis applied it; redis-py then resends the
    # same call (same token): it must answer committed, not conflict (a conflict would make
    # the commit loop apply the batch a second time).
    store.create(new_session())
    monkeypatch.setattr(redis_store.secrets, "token_hex", lambda n: "same-call")
    state = fitted(store.read("s1"))
    first = store.commit("s1", 1, state)
    again = store.commit("s1", 1, state)
    assert isinstance(first, Committed) and isinstance(again, Committed)
    assert again.session.version == 2
    monkeypatch.setattr(redis_store.secrets, "token_hex", lambda n: "another-call")
    moved = store.commit("s1", 1, state)
    assert isinstance(moved, Conflict) and moved.version == 2 and moved.session is not None
    assert store.read("s1").state.num_batches_tracked == 1


def test_a_conflict_brings_the_stored_session(
    store: RedisStore, redis_url: str, redis_server: RedisServer
) -> None:
    # Another replica moved the session: the conflict carries what a re-read would answer,
    # so the commit loop combines again without reading it back.
    store.create(new_session())
    other = RedisStore(redis_url)
    first = store.read("s1")
    committed = other.commit("s1", 1, fitted(other.read("s1")))
    assert isinstance(committed, Committed)
    calls = _fcalls(redis_server)
    moved = store.commit("s1", 1, fitted(first))
    assert _fcalls(redis_server) == calls + 1
    assert isinstance(moved, Conflict) and moved.session is not None
    stored = other.read("s1")
    assert moved.session.version == stored.version == 2
    assert np.array_equal(moved.session.state.running_mean, stored.state.running_mean)
    assert moved.session.state.num_batches_tracked == 1
    assert store.read_cached("s1") == moved.session  # what the next fit starts from
    assert store.read_cached("s1", owner="someone else") is None
    other.close()


def test_commit_is_one_function_call(store: RedisStore, redis_server: RedisServer) -> None:
    store.create(new_session())
    state = fitted(store.read("s1"))
    calls = _fcalls(redis_server)
    receipt = Receipt("s1", "k", "fp", "s1", 2, b"payload", time.time())
    history = HistoryEntry(2, time.time(), b"full", b"brief")
    assert isinstance(store.commit("s1", 1, state, receipt=receipt, history=history), Committed)
    assert _fcalls(redis_server) == calls + 1


def _fcalls(server: RedisServer) -> int:
    client = redis.Redis(port=server.port)
    stats = client.info("commandstats").get("cmdstat_fcall", {"calls": 0})
    client.close()
    return int(stats["calls"])


def test_a_lost_function_library_is_loaded_again(
    store: RedisStore, redis_server: RedisServer
) -> None:
    store.create(new_session())
    assert redis_server.command("FUNCTION", "FLUSH") == b"+OK"
    state = fitted(store.read("s1"))
    assert isinstance(store.commit("s1", 1, state), Committed)


def test_receipts_expire_after_the_ttl(redis_url: str) -> None:
    s = RedisStore(redis_url, StoreOptions(idempotency_ttl_s=0.2, timeout_s=1.0))
    s.create(new_session())
    receipt = Receipt("s1", "k", "fp", "s1", 2, b"payload", time.time())
    s.commit("s1", 1, fitted(s.read("s1")), receipt=receipt)
    assert s.receipt("s1", "k") == receipt
    deadline = time.monotonic() + 10
    while s.receipt("s1", "k") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.receipt("s1", "k") is None
    s.close()


def test_history_keeps_the_recent_full_and_every_kth_older_brief(redis_url: str) -> None:
    s = RedisStore(redis_url, StoreOptions(history=HistoryPolicy(recent=3, every=2, older=2)))
    s.create(new_session())
    for version in range(2, 11):
        entry = HistoryEntry(version, time.time(), b"F%d" % version, b"B%d" % version)
        s.commit("s1", version - 1, fitted(s.read("s1")), history=entry)
    items = [(h.version, h.data, h.full) for h in s.history("s1", 10)]
    assert items == [(10, b"F10", True), (9, b"F9", True), (8, b"F8", True),
                     (6, b"B6", False), (4, b"B4", False)]  # fmt: skip
    assert [h.version for h in s.history("s1", 2, before=9)] == [8, 6]
    s.close()


def test_concurrent_creates_with_one_key_make_one_session(store: RedisStore) -> None:
    scope = create_scope("alice")
    results: list[object] = []

    def create(i: int) -> None:
        sid = f"s{i}"
        receipt = Receipt(scope, "k", "fp", sid, 1, b"", time.time())
        results.append(store.create(new_session(sid, "alice"), receipt=receipt))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = {r.session.id for r in results if isinstance(r, Committed)}
    named = {r.receipt.session_id for r in results if isinstance(r, Duplicate)}
    assert len(winners) == 1
    assert named <= winners
    assert [s.id for s in store.list(10, None, "alice")] == sorted(winners)


def test_listing_skips_index_entries_without_a_session(
    store: RedisStore, redis_server: RedisServer
) -> None:
    for sid in ("a", "b", "c", "d"):
        store.create(new_session(sid))
    # As after a crash between the index write and the create.
    assert redis_server.command("DEL", session_keys("b")[0]) == b":1"
    assert [s.id for s in store.list(2, None)] == ["a", "c"]
    assert [s.id for s in store.list(2, "c")] == ["d"]


def test_redis_down_is_store_unavailable_and_the_same_store_recovers(
    own_redis: RedisServer,
) -> None:
    s = RedisStore(own_redis.url, StoreOptions(timeout_s=1.0))
    s.create(new_session())
    own_redis.stop()
    for call in (s.ping, lambda: s.read("s1"), lambda: s.commit("s1", 1, new_session().state)):
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert caught.value.headers["Retry-After"]
    own_redis.start()  # same port, same AOF
    s.ping()
    assert isinstance(s.commit("s1", 1, fitted(s.read("s1"))), Committed)
    assert s.read("s1").version == 2
    s.close()


def test_a_store_opened_while_redis_is_down_serves_once_it_is_up(
    own_redis: RedisServer,
) -> None:
    own_redis.stop()
    s = RedisStore(own_redis.url, StoreOptions(timeout_s=0.5))
    with pytest.raises(StoreUnavailable):
        s.ping()
    own_redis.start()
    s.create(new_session())
    assert isinstance(s.commit("s1", 1, fitted(s.read("s1"))), Committed)
    s.close()


def test_a_deleted_session_is_gone_with_its_receipts(store: RedisStore) -> None:
    store.create(new_session())
    receipt = Receipt("s1", "k", "fp", "s1", 2, b"", time.time())
    store.commit("s1", 1, fitted(store.read("s1")), receipt=receipt)
    store.delete("s1")
    assert store.receipt("s1", "k") is None
    with pytest.raises(SessionNotFound):
        store.commit("s1", 2, new_session().state, receipt=receipt)
    with pytest.raises(SessionNotFound):
        store.read("s1")


def test_a_hung_redis_is_store_unavailable_after_the_timeout(own_redis: RedisServer) -> None:
    s = RedisStore(own_redis.url, StoreOptions(timeout_s=0.3))
    s.create(new_session())
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        with pytest.raises(StoreUnavailable, match="imeout"):
            s.read("s1")
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    assert s.read("s1").version == 1
    s.close()
