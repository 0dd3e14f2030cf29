"""Replicas that race on one session take turns through its lease in Redis: a waiter is woken
when the holder's commit hands the lease over, a dead holder's lease expires by itself, and a
session nobody races on never touches a lease. Each store here stands for one replica process
(its own ``Turns``); the dead holder is a real process, SIGKILLed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

import bncore
from service.commit import Commits
from service.stores.base import Committed, Conflict, Session, StoreOptions
from service.stores.redis import RedisStore, lease_keys
from tests.redis_server import RedisServer
from tests.tools import kill_process

pytestmark = [pytest.mark.slow, pytest.mark.redis]

X = np.array([[1.0, 2.0], [3.0, 5.0]])


def new_session(sid: str = "s1") -> Session:
    now = time.time()
    state = bncore.initial_state(bncore.BNConfig(2, dtype="float64"))
    return Session(sid, state, 1, now, now)


def fitted(session: Session) -> bncore.BNState:
    state, _ = bncore.fit(session.state, X, output=False)
    return state


def replica(url: str, lease_ms: int = 2000) -> RedisStore:
    return RedisStore(url, StoreOptions(timeout_s=10.0), lease_ms=lease_ms)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def make_hot(store: RedisStore, sid: str = "s1") -> None:
    """As after a run of conflicts on ``sid``."""
    while not store._turns.is_hot(sid):
        store._turns.observe(sid, raced=True)


def test_a_conflict_puts_the_session_on_leases(redis_url: str, client: redis.Redis) -> None:
    a, b = replica(redis_url), replica(redis_url)
    a.create(new_session())
    stale = a.read("s1")
    assert a.lease_for_commit("s1", a.read("s1")) is None  # never raced: no lease taken
    assert client.exists(lease_keys("s1")[0]) == 0
    current = b.read("s1")  # b commits first: a's commit conflicts
    assert isinstance(b.commit("s1", 1, fitted(current)), Committed)
    out = a.commit("s1", 1, fitted(current))
    assert isinstance(out, Conflict) and out.version == 2
    moved = a.lease_for_commit("s1", stale)  # a still thinks version 1
    assert moved is not None and moved.version == 2
    assert moved.state.num_batches_tracked == 1
    assert client.exists(lease_keys("s1")[0]) == 1
    assert isinstance(a.commit("s1", 2, fitted(moved)), Committed)
    assert client.exists(lease_keys("s1")[0]) == 0  # the commit released it
    a.close()
    b.close()


def test_a_session_leaves_leases_after_a_run_of_commits_without_races(
    redis_url: str, client: redis.Redis
) -> None:
    a = replica(redis_url)
    a.create(new_session())
    make_hot(a)
    commits, version = Commits(), 1
    while a._turns.is_hot("s1"):
        version = commits.fit(a, a.read("s1"), X, output=False).record.version
        assert version < 100
    assert a.lease_for_commit("s1", a.read("s1")) is None
    assert client.exists(lease_keys("s1")[0]) == 0
    assert a.read("s1").state.num_batches_tracked == version - 1
    a.close()


def test_a_snapshot_older_than_this_processs_last_commit_is_combined_on_the_newer_one(
    redis_url: str,
) -> None:
    a = replica(redis_url)
    a.create(new_session())
    stale = a.read("s1")
    assert isinstance(a.commit("s1", 1, fitted(stale)), Committed)
    newer = a.lease_for_commit("s1", stale)
    assert newer is not None and newer.version == 2
    a.close()


def test_deleting_a_session_drops_its_lease(redis_url: str, client: redis.Redis) -> None:
    a = replica(redis_url)
    a.create(new_session())
    make_hot(a)
    assert a.lease_for_commit("s1", a.read("s1")) is None
    assert client.exists(lease_keys("s1")[0]) == 1
    a.delete("s1")
    assert client.exists(*lease_keys("s1")[:2]) == 0
    a.close()


def test_a_commit_that_ignores_another_processs_lease_is_a_conflict(
    redis_url: str, client: redis.Redis
) -> None:
    a, b = replica(redis_url), replica(redis_url)
    a.create(new_session())
    make_hot(a)
    start = a.read("s1")
    assert a.lease_for_commit("s1", start) is None  # a's turn
    assert b.commit("s1", 1, fitted(start)) == Conflict(1)  # b was not leasing: refused
    assert b._turns.is_hot("s1")  # so b takes turns from now on
    assert isinstance(a.commit("s1", 1, fitted(start)), Committed)
    assert client.exists(lease_keys("s1")[0]) == 0
    a.close()
    b.close()


def test_a_waiter_gets_the_lease_from_the_holders_commit(
    redis_url: str, client: redis.Redis
) -> None:
    a, b = replica(redis_url), replica(redis_url)
    a.create(new_session())
    start = a.read("s1")
    for store in (a, b):
        make_hot(store)
    assert a.lease_for_commit("s1", start) is None  # a holds it; the session is as a read it
    got: list[Session | None] = []
    waiter = threading.Thread(target=lambda: got.append(b.lease_for_commit("s1", start)))
    waiter.start()
    wait_until(lambda: client.llen(lease_keys("s1")[1]) == 1)  # b is queued
    assert isinstance(a.commit("s1", 1, fitted(start)), Committed)
    waiter.join(30)
    moved = got[0]
    assert moved is not None and moved.version == 2  # b combines on a's commit
    holder = client.get(lease_keys("s1")[0])
    token, waited = b._turns.take("s1")
    assert holder is not None and holder.decode() == token and waited
    b._turns.hold("s1", token, waited)
    assert isinstance(b.commit("s1", 2, fitted(moved)), Committed)
    assert client.exists(lease_keys("s1")[0]) == 0
    a.close()
    b.close()


HOLDER = """
import sys, time
from service.stores.base import StoreOptions
from service.stores.redis import RedisStore
store = RedisStore(sys.argv[1], StoreOptions(timeout_s=10.0), lease_ms=int(sys.argv[2]))
while not store._turns.is_hot("s1"):
    store._turns.observe("s1", raced=True)
store.lease_for_commit("s1", store.read("s1"))
print("held", flush=True)
time.sleep(600)
"""


def test_a_lease_held_by_a_killed_process_blocks_the_session_only_until_it_expires(
    redis_server: RedisServer, redis_url: str, client: redis.Redis
) -> None:
    survivor = replica(redis_url)
    survivor.create(new_session())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, "1500"], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
    finally:
        kill_process(holder)
        if holder.stdout is not None:
            holder.stdout.close()
    assert client.pttl(lease_keys("s1")[0]) > 0  # the dead process still holds it
    make_hot(survivor)
    commits = Commits(timeout_s=30.0)
    out = commits.fit(survivor, survivor.read("s1"), X, output=False)
    assert out.record.version == 2
    stored = survivor.read("s1")
    assert stored.version == 2 and stored.state.num_batches_tracked == 1
    assert client.exists(lease_keys("s1")[0]) == 0
    survivor.close()


def test_racing_replicas_apply_every_fit_once(redis_url: str) -> None:
    stores = [replica(redis_url, lease_ms=200) for _ in range(3)]
    stores[0].create(new_session())
    per_thread, threads = 25, 6

    def run(t: int) -> None:
        store, commits = stores[t % 3], loops[t % 3]
        for _ in range(per_thread):
            commits.fit(store, store.read("s1"), X, output=False)

    loops = [Commits(timeout_s=30.0) for _ in stores]
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    stored = stores[0].read("s1")
    assert stored.state.num_batches_tracked == per_thread * threads
    assert stored.version == 1 + per_thread * threads
    for store in stores:
        store.close()
