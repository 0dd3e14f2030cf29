"""The one write path of every store: compute outside, commit inside.

A route computes what does not depend on the stored state (a fit's batch moments: the O(N*C)
part) with no lock held, then ``Commits`` takes a per-session single-flight lock in this
process, reads ``(version, state)``, combines in O(C) and calls ``store.commit(expected
version, ...)``: ``Committed`` (done), ``Conflict`` (another process moved the version: re-read
and combine again, the batch moments are reused; bounded, then 503) or ``Duplicate`` (the
idempotency key is held: answer from its receipt). A fit's normalized batch is computed with
its moments, before the commit and outside the lock, with the weight, bias and eps of the
session as read; when the state it was combined with has others (a change landed in between),
it is computed again, after the commit, from that state.

Every retry with a known ``Idempotency-Key`` is answered from an O(C) receipt and the retried
body (its fingerprint matches, so it is the same body): the answer equals the first one byte
for byte, and nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

import bncore
from service.errors import StoreUnavailable
from service.records import FitRecord, pack, unpack
from service.stores.base import (
    CommitResult,
    Committed,
    CorruptRecord,
    Duplicate,
    HistoryEntry,
    Idempotency,
    IfMatch,
    PendingCommit,
    Ready,
    Receipt,
    Session,
    Store,
    check_version,
    create_scope,
    lease_for_commit,
    read_cached,
    submit_commit,
    version_matches,
)

Array = Any
T = TypeVar("T")


class CommitEvents(Protocol):
    """Where commit outcomes are counted (``service.metrics.Metrics`` implements it)."""

    def observe_commit(self, outcome: str) -> None:
        """One ``store.commit`` answered ``committed``, ``conflict`` or ``duplicate``."""

    def observe_retry(self) -> None:
        """A conflict made the loop re-read and combine again."""

    def observe_replay(self) -> None:
        """A request was answered from an idempotency receipt."""


class NoEvents:
    """Counts nothing (tests, or no metrics wired)."""

    def observe_commit(self, outcome: str) -> None:
        return None

    def observe_retry(self) -> None:
        return None

    def observe_replay(self) -> None:
        return None


@dataclass(frozen=True, init=False)
class FitOutcome:
    """A committed (or replayed) fit: its record and the normalized batch (None if not asked)."""

    record: FitRecord
    output: Array | None
    replayed: bool

    def __init__(self, record: FitRecord, output: Array | None, replayed: bool) -> None:
        d = self.__dict__  # as bncore.BNState: one per fit, no object.__setattr__ per field
        d["record"], d["output"], d["replayed"] = record, output, replayed


@dataclass(frozen=True)
class ChangeOutcome:
    """A committed (or replayed) change: the state it was applied to, the version it produced
    and the session as it is now (on a replay, later changes may have followed)."""

    before: bncore.BNState
    version: int
    session: Session
    replayed: bool


@dataclass(frozen=True, init=False)
class _FitPlan:
    """A fit past its replay check: the commit loop to drive, then its answer from the result."""

    steps: Steps[tuple[Session, Session, FitRecord] | Receipt]
    finish: Callable[[tuple[Session, Session, FitRecord] | Receipt], FitOutcome]

    def __init__(
        self,
        steps: Steps[tuple[Session, Session, FitRecord] | Receipt],
        finish: Callable[[tuple[Session, Session, FitRecord] | Receipt], FitOutcome],
    ) -> None:
        d = self.__dict__  # as FitOutcome
        d["steps"], d["finish"] = steps, finish


@dataclass(frozen=True, init=False)
class _Predicted(Session):
    """The session as ``pending`` (a commit handed to the store, maybe not durable yet) will
    make it: a commit combined on it may only land if ``pending`` does."""

    pending: PendingCommit | None = None

    def __init__(
        self,
        id: str,
        state: bncore.BNState,
        version: int,
        created_at: float,
        updated_at: float,
        name: str | None = None,
        owner: str | None = None,
        pending: PendingCommit | None = None,
    ) -> None:
        # The instance dict filled directly (as bncore.BNState): one is built per fit.
        d = self.__dict__
        d["id"], d["state"], d["version"] = id, state, version
        d["created_at"], d["updated_at"], d["name"] = created_at, updated_at, name
        d["owner"], d["pending"] = owner, pending


@dataclass
class _Flight:
    """One session's single-flight lock, and the session as the last commit handed to the
    store will make it."""

    lock: threading.Lock
    users: int = 0
    last: _Predicted | None = None


class _Flights:
    """Per-session locks, dropped as soon as no thread holds or waits for them (bounded by
    the number of requests in flight, whatever the number of sessions)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def latest(self, session_id: str) -> _Predicted | None:
        """What the session will be once the commits in flight to it land, if any are."""
        flight = self._flights.get(session_id)
        return None if flight is None else flight.last

    def enter(self, session_id: str) -> _Flight:
        """The session's flight, kept (with its prediction) until the caller's ``leave``."""
        with self._guard:
            flight = self._flights.get(session_id)
            if flight is None:
                flight = self._flights[session_id] = _Flight(threading.Lock())
            flight.users += 1
        return flight

    def leave(self, session_id: str, flight: _Flight) -> None:
        """Undo one ``enter``: the flight is dropped when no caller is left inside."""
        with self._guard:
            flight.users -= 1
            if flight.users == 0:
                del self._flights[session_id]


def _forget(flight: _Flight, pending: PendingCommit) -> None:
    """``pending`` did not land: drop what it predicted, unless a newer commit replaced it."""
    with flight.lock:
        if flight.last is not None and flight.last.pending is pending:
            flight.last = None


# The commit loop as a generator: it yields a pending commit (sent back its outcome) or seconds
# to back off (sent back None), and returns its result.
Steps = Generator[PendingCommit | float, CommitResult | None, T]


def _drive(steps: Steps[T]) -> T:
    """Run the commit loop in this thread: block on each commit, sleep each back-off."""
    answer: CommitResult | None = None
    error: BaseException | None = None
    while True:
        try:  # the loop forgets a commit that raised, and raises on
            step = steps.send(answer) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        answer, error = None, None
        try:
            if isinstance(step, float):
                time.sleep(step)
            else:
                answer = step.result()
        except BaseException as exc:
            error = exc


async def _drive_async(steps: Steps[T]) -> T:
    """Run the commit loop on the event loop: await each commit and each back-off."""
    answer: CommitResult | None = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = steps.send(answer) if error is None else steps.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            answer, error = None, None
            try:
                if type(step) is Ready:  # committed in the call (memory): nothing to await
                    answer = step.outcome
                elif isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    answer = await step.wait()
            except BaseException as exc:
                error = exc
    finally:
        steps.close()  # a cancelled request still leaves the session's flight


# What a combine step gives the loop: the new state, how to make the receipt payload (only
# called for requests with an Idempotency-Key), the history entry and a value for the caller.
Built = tuple[bncore.BNState, Callable[[], bytes], HistoryEntry | None, T]


class Commits:
    """The commit loop, one per app (process): ``fit``, ``change`` and ``create``."""

    def __init__(
        self, events: CommitEvents | None = None, *, retries: int = 16, timeout_s: float = 10.0
    ) -> None:
        self.events: CommitEvents = events or NoEvents()
        self._retries = retries
        self._timeout_s = timeout_s
        self._flights = _Flights()

    def in_flight(self) -> int:
        """Sessions with a commit in flight in this process (the lock table's size)."""
        return len(self._flights)

    def read(self, store: Store, session_id: str) -> Session:
        """The session a fit starts from: while this process has commits to it in flight, the
        state they will produce (the loop would move to it anyway: measured, the store read it
        saves was ~8% of a small fit's CPU on a hot session), else the stored one. The owner
        is checked as ``store.read`` checks it (an ``OwnedStore`` has one). A store that keeps
        decoded sessions may answer from its copy (``read_cached``, Redis): the commit's
        version check catches a stale one."""
        latest = self._flights.latest(session_id)
        if latest is not None and latest.owner == getattr(store, "owner", latest.owner):
            return latest
        found = read_cached(store, session_id)
        return found if found is not None else store.read(session_id)

    def _replay(self, receipt: Receipt, idem: Idempotency) -> Receipt:
        receipt.check(idem)
        self.events.observe_replay()
        return receipt

    def _known(self, store: Store, scope: str, idem: Idempotency | None) -> Receipt | None:
        if idem is None:
            return None
        found = store.receipt(scope, idem.key)
        return None if found is None else self._replay(found, idem)

    def _loop(
        self,
        store: Store,
        snapshot: Session,
        build: Callable[[Session], Built[T]],
        if_match: IfMatch,
        idem: Idempotency | None,
    ) -> Steps[tuple[Session, Session, T] | Receipt]:
        """Combine on the current state and commit until committed; (before, after, value),
        or the receipt of a duplicate. A generator of what to wait for (a pending commit, or
        seconds of back-off), driven by ``_drive`` in a thread or ``_drive_async`` on the
        event loop, so that both run this one loop.

        The session's lock is held while combining and handing the commit to the store, not
        while the store makes it durable: the next fit combines on the predicted state (and
        may only land if this commit does), so fits to one session share a group commit.
        (One generator with explicit acquire/release: every fit runs it, and the nested
        generator and context managers it replaced cost some 10% of a small fit's CPU.)"""
        sid = snapshot.id
        flight = self._flights.enter(sid)
        try:
            current, fresh = snapshot, False
            after = snapshot.pending if isinstance(snapshot, _Predicted) else None
            for attempt in range(self._retries + 1):
                if not flight.lock.acquire(timeout=self._timeout_s):
                    raise StoreUnavailable(
                        f"session {sid!r} is busy: no commit slot within {self._timeout_s:g} s"
                    )
                try:
                    last = flight.last
                    if last is not None and last.version > current.version:
                        # Landed or on its way, or doomed: a prediction, not stored data.
                        current, after, fresh = last, last.pending, False
                    moved = lease_for_commit(store, sid, current)  # Redis: replicas take turns
                    if moved is not None:
                        current, after, fresh = moved, None, True
                    if if_match is not None:
                        if not version_matches(current.version, if_match) and not fresh:
                            current, after, fresh = store.read(sid), None, True  # stored data
                        check_version(current.version, if_match)
                    state, payload, history, value = build(current)
                    receipt = None
                    if idem is not None:
                        v = current.version + 1
                        receipt = Receipt(
                            sid, idem.key, idem.fingerprint, sid, v, payload(), time.time()
                        )
                    pending = submit_commit(
                        store,
                        sid,
                        current.version,
                        state,
                        receipt=receipt,
                        history=history,
                        after=after,
                    )
                    flight.last = _Predicted(
                        sid,
                        state,
                        current.version + 1,
                        current.created_at,
                        time.time(),
                        current.name,
                        current.owner,
                        pending,
                    )
                    before = current
                finally:
                    flight.lock.release()
                try:
                    out = yield pending  # durable (or refused), with no lock held
                except BaseException:
                    _forget(flight, pending)
                    raise
                assert out is not None
                if isinstance(out, Committed):
                    self.events.observe_commit("committed")
                    return before, out.session, value
                _forget(flight, pending)
                if isinstance(out, Duplicate):
                    self.events.observe_commit("duplicate")
                    assert idem is not None
                    return self._replay(out.receipt, idem)
                self.events.observe_commit("conflict")
                self.events.observe_retry()
                met = out.session  # the stored session, when the store sent it along (Redis)
                if met is None:
                    # Another process committed: spread the retries of racing replicas apart.
                    # (Not after a conflict that brought the session: sleeping would make it
                    # stale, and the next attempt conflict again; racing writers take turns
                    # through the store instead: Redis leases.)
                    yield random.uniform(0, min(0.02, 0.0005 * 2**attempt))
                    met = store.read(sid)
                current, after, fresh = met, None, True
            raise StoreUnavailable(
                f"session {sid!r} changed under {self._retries + 1} commits in a row; retry",
            )
        finally:
            self._flights.leave(sid, flight)

    def fit(
        self,
        store: Store,
        session: Session,
        x: Array,
        *,
        if_match: IfMatch = None,
        idem: Idempotency | None = None,
        output: bool = True,
    ) -> FitOutcome:
        """Fit ``x`` (an array of the backend) into ``session`` (as read, owner checked)."""
        plan = self._fit(store, session, x, if_match, idem, output)
        return plan if isinstance(plan, FitOutcome) else plan.finish(_drive(plan.steps))

    async def fit_async(
        self,
        store: Store,
        session: Session,
        x: Array,
        *,
        if_match: IfMatch = None,
        idem: Idempotency | None = None,
        output: bool = True,
    ) -> FitOutcome:
        """``fit`` on the event loop, for a small ``x`` and a ``loop_safe`` store: waiting
        for durability yields to the loop instead of holding a thread."""
        plan = self._fit(store, session, x, if_match, idem, output)
        return plan if isinstance(plan, FitOutcome) else plan.finish(await _drive_async(plan.steps))

    def _fit(
        self,
        store: Store,
        session: Session,
        x: Array,
        if_match: IfMatch,
        idem: Idempotency | None,
        output: bool,
    ) -> FitOutcome | _FitPlan:
        known = self._known(store, session.id, idem)
        if known is not None:
            return self._replayed_fit(session, x, FitRecord.from_bytes(known.payload), output)
        # The O(N*C) part, no lock held: the batch's moments, its output and the state it
        # makes, all from the session as read, in one call (bncore.fit: one C call on a CPU).
        start = session.state
        made, fitted = bncore.fit(start, x, output=output)
        batch = fitted.batch

        def build(current: Session) -> Built[FitRecord]:
            # Combined on the state the fit started from (the usual case: no other commit in
            # between), the new state is the fit's own; else the batch joins the current one.
            state = made if current.state is start else bncore.apply_batch(current.state, batch)
            record = _fit_record(current, state, batch)
            return state, record.to_bytes, record.history_entry(), record

        def finish(out: tuple[Session, Session, FitRecord] | Receipt) -> FitOutcome:
            if isinstance(out, Receipt):
                return self._replayed_fit(session, x, FitRecord.from_bytes(out.payload), output)
            before, _, record = out
            y = fitted.output
            if output and not _same_affine(before.state, start):
                y = bncore.normalize(before.state, x, batch)  # weight, bias or eps changed
            return FitOutcome(record, y, False)

        return _FitPlan(self._loop(store, session, build, if_match, idem), finish)

    def _replayed_fit(
        self, session: Session, x: Array, record: FitRecord, output: bool
    ) -> FitOutcome:
        if not output:
            return FitOutcome(record, None, True)
        # The weight, bias and eps that normalized the first answer, on the session's device.
        xp = bncore.namespace(session.state.population.mean)
        cfg = replace(session.state.config, eps=record.eps)
        used = replace(
            session.state,
            config=cfg,
            weight=None if record.weight is None else xp.asarray(record.weight),
            bias=None if record.bias is None else xp.asarray(record.bias),
        )
        b = record.batch
        batch = bncore.Moments(xp.asarray(b.count), xp.asarray(b.mean), xp.asarray(b.m2))
        return FitOutcome(record, bncore.normalize(used, x, batch), True)

    def change(
        self,
        store: Store,
        session: Session,
        fn: Callable[[bncore.BNState], bncore.BNState],
        *,
        if_match: IfMatch = None,
        idem: Idempotency | None = None,
    ) -> ChangeOutcome:
        """Apply the O(C) ``fn`` (reset, import, an SGD step) to the current state. A receipt
        keeps the state it was applied to, so a retry recomputes its answer from it."""
        known = self._known(store, session.id, idem)
        if known is not None:
            return self._replayed_change(store, session, known)

        def build(current: Session) -> Built[None]:
            before = current.state
            return fn(before), lambda: bncore.state_to_bytes(before), None, None

        out = _drive(self._loop(store, session, build, if_match, idem))
        if isinstance(out, Receipt):
            return self._replayed_change(store, session, out)
        before, after, _ = out
        return ChangeOutcome(before.state, after.version, after, False)

    def _replayed_change(self, store: Store, session: Session, receipt: Receipt) -> ChangeOutcome:
        xp = bncore.namespace(session.state.population.mean)
        try:
            before = bncore.state_from_bytes(receipt.payload, xp)
        except bncore.StateError as exc:
            raise _corrupt(exc) from None
        return ChangeOutcome(before, receipt.version, store.read(session.id), True)

    def create(
        self, store: Store, session: Session, idem: Idempotency | None = None
    ) -> tuple[Session, bool]:
        """Store a new ``session`` (owner set); with ``idem`` a retry answers the session as it
        was created (``(session, True)``) unless that session was deleted since."""
        scope = create_scope(session.owner)
        known = self._known(store, scope, idem)
        if known is not None:
            return _created(known, session), True
        receipt = None
        if idem is not None:
            payload = _creation_payload(session)
            receipt = Receipt(
                scope, idem.key, idem.fingerprint, session.id, 1, payload, time.time()
            )
        out = store.create(session, receipt=receipt)
        if isinstance(out, Duplicate):
            assert idem is not None
            self.events.observe_commit("duplicate")
            return _created(self._replay(out.receipt, idem), session), True
        assert isinstance(out, Committed)
        self.events.observe_commit("committed")
        return out.session, False


def _same_affine(a: bncore.BNState, b: bncore.BNState) -> bool:
    """Whether ``a`` and ``b`` normalize a batch the same way: the same weight, bias and eps.
    By identity (states are immutable, and a fit keeps its state's weight and bias arrays):
    a change that set new ones (an SGD step, an import, a reset) makes new arrays."""
    return a is b or (a.weight is b.weight and a.bias is b.bias and a.config.eps == b.config.eps)


def _fit_record(before: Session, after: bncore.BNState, batch: bncore.Moments) -> FitRecord:
    """The O(C) record of a fit combined on ``before``: drift against its running stats."""
    state = before.state
    cfg = state.config
    drift = bncore.drift(state, batch)
    summary = drift.summary() if drift is not None else None
    flags = bncore.drift_flags(cfg, summary) if summary is not None else []
    weight, bias = state.weight, state.bias
    if not (
        type(batch.mean) is np.ndarray
        and (weight is None or type(weight) is np.ndarray)
        and (bias is None or type(bias) is np.ndarray)
    ):  # on a device: the record is kept on the host (the drift follows the batch)
        host = bncore.to_host
        batch = bncore.Moments(host(batch.count), host(batch.mean), host(batch.m2))
        weight = None if weight is None else host(weight)
        bias = None if bias is None else host(bias)
        if drift is not None:
            drift = bncore.Drift(host(drift.mean_shift), host(drift.log_var_ratio), host(drift.kl))
    # Every channel counts the same unless values are omitted: no max over the counts.
    same = cfg.nan_policy != "omit" and batch.count.size > 0
    return FitRecord(
        version=before.version + 1,
        num_batches_tracked=after.num_batches_tracked,
        time=time.time(),
        batch=batch,
        weight=weight,
        bias=bias,
        eps=cfg.eps,
        drift=drift,
        summary=summary,
        flags=flags,
        count=int(batch.count[0]) if same else None,
    )


def _creation_payload(session: Session) -> bytes:
    """A created session at version 1, O(C): enough to answer a retried create identically."""
    record = np.frombuffer(bncore.state_to_bytes(session.state), np.uint8)
    meta = {"name": session.name, "created_at": session.created_at}
    return pack(meta, {"state": record})


def _created(receipt: Receipt, like: Session) -> Session:
    """The session as ``receipt``'s create stored it (for the replayed 201)."""
    meta, arrays = unpack(receipt.payload)
    xp = bncore.namespace(like.state.population.mean)
    try:
        state = bncore.state_from_bytes(arrays["state"].tobytes(), xp)
        created = float(meta["created_at"])
        return Session(receipt.session_id, state, 1, created, created, meta["name"], like.owner)
    except (KeyError, TypeError, ValueError, bncore.StateError) as exc:
        raise _corrupt(exc) from None


def _corrupt(exc: Exception) -> StoreUnavailable:
    return CorruptRecord(f"an idempotency receipt cannot be read: {exc}")
