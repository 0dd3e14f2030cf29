"""The commit loop's shortcut for fits: while this process has a commit to a session in flight,
a fit starts from the state that commit will produce (``Commits.read``) instead of reading the
store. Checked here: the owner is still checked, and a fit combined on a predicted state never
lands when the commit it was predicted from fails (another writer may take its version)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import bncore
from service.commit import Commits
from service.errors import SessionNotFound, StoreUnavailable
from service.stores import MemoryStore
from service.stores.base import (
    CommitResult,
    Conflict,
    HistoryEntry,
    PendingCommit,
    Receipt,
    Session,
    submit_commit,
)
from service.stores.owned import OwnedStore

X = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
Y = np.array([[10.0, 20.0], [30.0, 60.0]], np.float32)


class _HeldThenFailed:
    """A commit that is in flight until ``release`` is set, then fails as a store fault."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def result(self) -> CommitResult:
        self.release.wait(30)
        raise StoreUnavailable("the disk went away")

    async def wait(self) -> CommitResult:
        return self.result()


class _Wrapped:
    """A memory store, but for the ``submit_commit`` of a subclass."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FirstCommitFails(_Wrapped):
    """A memory store whose first ``submit_commit`` hangs, then fails."""

    def __init__(self, inner: MemoryStore) -> None:
        super().__init__(inner)
        self.release = threading.Event()
        self.first = True

    def submit_commit(
        self,
        session_id: str,
        expected_version: int,
        state: bncore.BNState,
        *,
        receipt: Receipt | None = None,
        history: HistoryEntry | None = None,
        after: PendingCommit | None = None,
    ) -> PendingCommit:
        if self.first:
            self.first = False
            return _HeldThenFailed(self.release)
        return submit_commit(
            self.inner, session_id, expected_version, state, receipt=receipt, after=after
        )


def _session(owner: str | None = None) -> Session:
    now = time.time()
    return Session("s", bncore.initial_state(bncore.BNConfig(2)), 1, now, now, owner=owner)


def _in_flight(commits: Commits, sid: str) -> None:
    deadline = time.monotonic() + 10
    while commits._flights.latest(sid) is None:
        assert time.monotonic() < deadline, "the first fit never reached its commit"
        time.sleep(0.001)


def test_a_fit_on_a_predicted_state_does_not_land_when_its_base_fails() -> None:
    inner = MemoryStore()
    inner.create(_session())
    store = FirstCommitFails(inner)
    commits = Commits()
    failed: list[BaseException] = []

    def first() -> None:
        try:
            commits.fit(store, store.read("s"), X, output=False)  # type: ignore[arg-type]
        except StoreUnavailable as exc:
            failed.append(exc)

    t = threading.Thread(target=first)
    t.start()
    _in_flight(commits, "s")
    predicted = commits.read(store, "s")  # type: ignore[arg-type]
    assert predicted.version == 2 and predicted.state.num_batches_tracked == 1
    # Another process takes version 2 with another batch while the first commit hangs.
    other = bncore.fit(inner.read("s").state, Y)[0]
    inner.commit("s", 1, other)
    store.release.set()
    t.join()
    assert failed, "the first commit was meant to fail"
    commits.fit(store, predicted, X, output=False)  # type: ignore[arg-type]
    final = inner.read("s")
    # Y then X, never X (the failed commit) then X.
    expected = bncore.fit(other, X)[0]
    assert (final.version, final.state.num_batches_tracked) == (3, 2)
    np.testing.assert_array_equal(final.state.running_mean, expected.running_mean)
    np.testing.assert_array_equal(final.state.population.count, [4, 4])


def test_a_fit_in_flight_does_not_open_the_session_to_another_owner() -> None:
    inner = MemoryStore()
    inner.create(_session(owner="alice"))
    store = FirstCommitFails(inner)
    commits = Commits()

    def first() -> None:
        with pytest.raises(StoreUnavailable):
            commits.fit(store, store.read("s"), X, output=False)  # type: ignore[arg-type]

    t = threading.Thread(target=first)
    t.start()
    try:
        _in_flight(commits, "s")
        assert commits.read(OwnedStore(inner, "alice"), "s").version == 2  # the prediction
        with pytest.raises(SessionNotFound):
            commits.read(OwnedStore(inner, "mallory"), "s")
    finally:
        store.release.set()
        t.join()


def test_a_fit_answers_what_bncore_fit_gives_on_the_session_it_read() -> None:
    store = MemoryStore()
    store.create(_session())
    start = store.read("s")
    out = Commits().fit(store, start, X)
    made, fitted = bncore.fit(start.state, X)
    assert out.output is not None and fitted.output is not None
    assert out.output.tobytes() == fitted.output.tobytes()
    after = store.read("s").state
    assert after.running_var is not None and made.running_var is not None
    assert after.running_var.tobytes() == made.running_var.tobytes()
    assert after.population.m2.tobytes() == made.population.m2.tobytes()


def test_a_fit_read_before_a_change_is_combined_and_normalized_with_the_changed_state() -> None:
    store = MemoryStore()
    store.create(_session())
    stale = store.read("s")
    commits = Commits()
    weight = np.array([2.0, -3.0], np.float32)
    commits.change(store, stale, lambda st: replace(st, weight=weight, num_batches_tracked=5))
    changed = store.read("s").state
    out = commits.fit(store, stale, X)  # conflicts, then combines on the changed state
    made, fitted = bncore.fit(changed, X)
    assert out.output is not None and fitted.output is not None
    assert out.output.tobytes() == fitted.output.tobytes()
    final = store.read("s")
    assert (final.version, final.state.num_batches_tracked) == (3, 6)
    assert final.state.running_mean is not None and made.running_mean is not None
    assert final.state.running_mean.tobytes() == made.running_mean.tobytes()


class _Recorded:
    """A pending commit the test answers itself (it drives the commit loop step by step)."""

    def __init__(self, expected_version: int) -> None:
        self.expected_version = expected_version

    def result(self) -> CommitResult:
        raise AssertionError("driven by the test")

    async def wait(self) -> CommitResult:
        raise AssertionError("driven by the test")


class RecordingStore(_Wrapped):
    """A memory store whose ``submit_commit`` only records the version it was given."""

    def submit_commit(
        self,
        session_id: str,
        expected_version: int,
        state: bncore.BNState,
        **_: Any,
    ) -> _Recorded:
        return _Recorded(expected_version)


def test_if_match_after_a_conflict_is_checked_against_the_store_not_a_doomed_prediction() -> None:
    """Fits C, R (If-Match 2, on C's predicted version 2) and D (on R's prediction) are in
    flight on one session when another process takes version 2 first: C fails, R conflicts.
    The store holds version 2, what R's If-Match names, while D's prediction (version 4, built
    on R's failed commit: it cannot land) is the newest in this process. R's next attempt must
    judge If-Match on the stored session, not answer 412 naming D's version, which never
    exists (it did, before the commit loop counted a prediction as stored data)."""
    inner = MemoryStore()
    inner.create(_session())
    store: Any = RecordingStore(inner)
    commits = Commits()

    def build(current: Session) -> Any:
        state = bncore.fit(current.state, X)[0]
        return state, lambda: b"", None, None

    def loop(if_match: Any = None) -> Any:
        return commits._loop(store, commits.read(store, "s"), build, if_match, None)

    c = loop()
    assert next(c).expected_version == 1  # C: on the stored version 1
    r = loop(frozenset({2}))
    assert next(r).expected_version == 2  # R: on C's prediction (version 2)
    d = loop()
    assert next(d).expected_version == 3  # D: on R's prediction
    inner.commit("s", 1, bncore.fit(inner.read("s").state, Y)[0])  # another process: v2
    with pytest.raises(StoreUnavailable):
        c.throw(StoreUnavailable("C's commit failed"))
    back_off = r.send(Conflict(-1))  # R was built on C, which did not land
    assert isinstance(back_off, float)
    retried = r.send(None)  # R re-reads (version 2) and tries again
    assert retried.expected_version == 2  # on the stored session that If-Match names
    for g in (r, d):
        g.close()
    assert commits.in_flight() == 0
