"""Prometheus metrics: requests and latencies by route template (never by session id), the
operations and values the service computed, store commit outcomes, idempotent replays, and
drift gauges for the sessions that opt in (``drift_metrics``), a bounded number of them.

Two modes, chosen by the environment when ``prometheus_client`` is first imported:

- multiprocess (``PROMETHEUS_MULTIPROC_DIR`` set, as ``bnaas serve`` does through
  ``service.metrics_dir``): every worker writes its values to files in that directory and
  ``/metrics`` aggregates all of them, so a scrape reads process-wide totals whichever worker
  answers it;
- in-process (tests, a bare ``uvicorn`` with one worker): one registry per app, so several apps
  in one process do not collide.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.metrics_dir import ENV as MULTIPROC_ENV

__all__ = ["CONTENT_TYPE_LATEST", "OPS", "Metrics"]

OPS = ("fit", "transform", "backward", "fold", "merge")
COMMIT_OUTCOMES = ("committed", "conflict", "duplicate")
# The drift summary members exported as gauges (bncore.Drift.summary's scalar members).
DRIFT_MEASURES = ("max_kl", "mean_kl", "max_abs_mean_shift", "max_abs_log_var_ratio")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_ADMITTED = "drift-sessions.txt"  # not *.db: MultiProcessCollector reads only those


def multiprocess_dir() -> str | None:
    """The shared metrics directory when multiprocess mode is on; None in-process.

    Raises RuntimeError when the variable was set after ``prometheus_client`` was imported
    (its value class is fixed at import): the counts would silently stay per process."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROC_ENV} was set after prometheus_client was imported; set it before "
            "the app is imported (bnaas serve does)"
        )
    return path


class _Admission:
    """Which sessions may have drift gauges: the first ``limit`` that report, process-wide.

    In multiprocess mode the admitted ids live in a file next to the metric files, read and
    appended under an exclusive lock, so that N workers together never admit more than
    ``limit`` sessions."""

    def __init__(self, limit: int, directory: str | None) -> None:
        self.limit = limit
        self.path = Path(directory, _ADMITTED) if directory else None
        self.known: set[str] = set()  # admitted (cached: admission is never revoked)
        self.full = False

    def admit(self, session_id: str) -> bool:
        if session_id in self.known:
            return True
        if self.full:
            return False
        if self.path is None:
            admitted = len(self.known) < self.limit
        else:
            try:
                with open(self.path, "a+", encoding="ascii") as f:
                    fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
                    f.seek(0)
                    ids = set(f.read().split())
                    admitted = session_id in ids or len(ids) < self.limit
                    if admitted and session_id not in ids:
                        f.write(session_id + "\n")
            except OSError:  # the directory went away: no gauge rather than a failed fit
                return False
            # Once full the file's set is final: keep all of it and never read it again.
            self.known |= ids
        if admitted:
            self.known.add(session_id)
        else:
            self.full = True
        return admitted


class Metrics:
    """The service's metrics; ``app.state.metrics``. Methods are cheap and never raise."""

    def __init__(self, drift_sessions: int = 100) -> None:
        self.directory = multiprocess_dir()
        # In multiprocess mode the values live in files; the registry only scopes the names.
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bnaas_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "bnaas_request_seconds",
            "HTTP request latency, first byte in to last byte out",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.ops = Counter("bnaas_operations", "Computations, by operation", ["op"], registry=r)
        self.values = Counter(
            "bnaas_values",
            "Tensor values processed (input elements), by operation",
            ["op"],
            registry=r,
        )
        self.commits = Counter(
            "bnaas_commits",
            "Store commits by outcome",
            ["outcome"],
            registry=r,
        )
        self.retries = Counter(
            "bnaas_commit_retries", "Commit attempts repeated after a version conflict", registry=r
        )
        self.replays = Counter(
            "bnaas_idempotent_replays",
            "Requests answered with the saved first answer (Idempotency-Key retry)",
            registry=r,
        )
        self.flags = Counter(
            "bnaas_drift_flags",
            "Fits whose drift exceeded a session threshold",
            ["flag"],
            registry=r,
        )
        self.drift = Gauge(
            "bnaas_drift",
            "Drift of the session's latest fit (opt-in sessions, bounded in number)",
            ["session_id", "measure"],
            registry=r,
            multiprocess_mode="mostrecent",  # the newest fit wins, whichever worker took it
        )
        self.drift_dropped = Counter(
            "bnaas_drift_sessions_dropped",
            "Drift observations not exported: the drift session limit was reached",
            registry=r,
        )
        self.admission = _Admission(drift_sessions, self.directory)
        # Zero-valued children, so that dashboards and rate() see every series from the start;
        # kept, as are the request series below: ``labels()`` costs a lock and a dict lookup
        # per call, about half of what a request's observations cost (issue 10).
        self._ops = {op: (self.ops.labels(op), self.values.labels(op)) for op in OPS}
        self._commits = {outcome: self.commits.labels(outcome) for outcome in COMMIT_OUTCOMES}
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    # --- the observation API (PLAN.md contract 6) ---

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered with ``status`` after ``seconds``, by route template."""
        key = (method, route, status)
        series = self._requests.get(key)
        if series is None:  # bounded: the parser's methods x the route table x statuses
            count = self.requests.labels(method, route, str(status))
            series = self._requests[key] = (count, self.latency.labels(method, route))
        series[0].inc()
        series[1].observe(seconds)

    def observe_op(self, op: str, values: int) -> None:
        """One ``op`` (fit, transform, backward, fold, merge) over ``values`` input elements."""
        count, elements = self._ops[op]
        count.inc()
        elements.inc(values)

    def observe_commit(self, outcome: str) -> None:
        """A store commit's outcome: committed, conflict or duplicate."""
        self._commits[outcome].inc()

    def observe_retry(self) -> None:
        self.retries.inc()

    def observe_replay(self) -> None:
        self.replays.inc()

    def observe_drift(self, session_id: str, summary: Mapping[str, Any]) -> None:
        """A fit's ``Drift.summary()`` as gauges, for a session with ``drift_metrics``; beyond
        the limit of sessions it is only counted in ``bnaas_drift_sessions_dropped``."""
        if not self.admission.admit(session_id):
            self.drift_dropped.inc()
            return
        for measure in DRIFT_MEASURES:
            value = summary.get(measure)
            if isinstance(value, (int, float)):
                self.drift.labels(session_id, measure).set(float(value))

    def observe_flags(self, flags: Iterable[str]) -> None:
        """A fit's drift flags (``bncore.drift_flags``), for every session."""
        for flag in flags:
            self.flags.labels(flag).inc()

    def observe_fit(
        self,
        session_id: str,
        values: int,
        summary: Mapping[str, Any] | None,
        flags: Iterable[str],
        drift_gauges: bool,
    ) -> None:
        """A committed fit: the operation, its drift flags, and (for a session created with
        ``drift_metrics``) its drift summary as gauges."""
        self.observe_op("fit", values)
        self.observe_flags(flags)
        if drift_gauges and summary is not None:
            self.observe_drift(session_id, summary)

    # --- exposition ---

    def exposition(self) -> bytes:
        """The text format: all workers' values in multiprocess mode, else this app's."""
        if self.directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
