"""Prometheus metrics: labels by route template, operation counts, bounded drift gauges, the
multiprocess directory, and process-wide totals from a real two-worker server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.metrics import Metrics, _Admission
from service.metrics_dir import ENV, multiprocess_dir
from service.settings import Settings
from tests.e2e.conftest import Server
from tests.service.conftest import create


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample values of one metric family's samples named ``name``, by sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        v for key, v in samples(text, name).items() if all((k, labels[k]) in key for k in labels)
    )


@pytest.fixture
def app_client() -> Iterator[TestClient]:
    app = create_app(Settings(store="memory://", device="cpu"))
    with TestClient(app) as c:
        yield c


def test_metrics_are_served_as_prometheus_text(app_client: TestClient) -> None:
    r = app_client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    assert "bnaas_requests_total" in r.text or "# TYPE bnaas_requests counter" in r.text


def test_requests_are_labelled_by_route_template_never_by_session_id(
    app_client: TestClient,
) -> None:
    sid = create(app_client)
    assert app_client.get(f"/v1/sessions/{sid}").status_code == 200
    assert app_client.get("/v1/sessions/not-a-session").status_code == 404
    text = app_client.get("/metrics").text
    assert sid not in text
    assert "not-a-session" not in text
    route = "/v1/sessions/{session_id}"
    assert total(text, "bnaas_requests_total", route=route, status="200") == 1
    assert total(text, "bnaas_requests_total", route=route, status="404") == 1
    assert total(text, "bnaas_request_seconds_count", route=route, method="GET") == 2


def test_an_unknown_path_is_labelled_unmatched(app_client: TestClient) -> None:
    assert app_client.get("/no/such/path/abc123").status_code == 404
    text = app_client.get("/metrics").text
    assert "abc123" not in text
    assert total(text, "bnaas_requests_total", route="unmatched", status="404") == 1


def test_fit_and_transform_count_operations_and_input_values(app_client: TestClient) -> None:
    sid = create(app_client)
    batch = {"data": [[1.0, 2.0, 3.0], [2.0, 4.0, 7.0]]}
    assert app_client.post(f"/v1/sessions/{sid}/fit", json=batch).status_code == 200
    assert app_client.post(f"/v1/sessions/{sid}/fit", json=batch).status_code == 200
    assert app_client.post(f"/v1/sessions/{sid}/transform", json=batch).status_code == 200
    text = app_client.get("/metrics").text
    assert total(text, "bnaas_operations_total", op="fit") == 2
    assert total(text, "bnaas_values_total", op="fit") == 12
    assert total(text, "bnaas_operations_total", op="transform") == 1
    assert total(text, "bnaas_values_total", op="transform") == 6
    assert total(text, "bnaas_operations_total", op="fold") == 0  # present from the start


def test_a_rejected_fit_is_not_counted_as_an_operation(app_client: TestClient) -> None:
    sid = create(app_client)
    r = app_client.post(f"/v1/sessions/{sid}/fit", json={"data": [[1.0, 2.0]]})
    assert r.status_code in (400, 422)
    text = app_client.get("/metrics").text
    assert total(text, "bnaas_operations_total", op="fit") == 0


def test_two_apps_in_one_process_keep_their_own_counts() -> None:
    a = create_app(Settings(store="memory://", device="cpu"))
    b = create_app(Settings(store="memory://", device="cpu"))
    with TestClient(a) as ca, TestClient(b) as cb:
        for _ in range(3):
            ca.get("/healthz")
        cb.get("/healthz")
        assert total(ca.get("/metrics").text, "bnaas_requests_total", route="/healthz") == 3
        assert total(cb.get("/metrics").text, "bnaas_requests_total", route="/healthz") == 1


def test_commit_events_count_by_outcome_retries_and_replays() -> None:
    m = Metrics()
    for outcome in ("committed", "committed", "conflict", "duplicate"):
        m.observe_commit(outcome)
    m.observe_retry()
    m.observe_replay()
    text = m.exposition().decode()
    assert total(text, "bnaas_commits_total", outcome="committed") == 2
    assert total(text, "bnaas_commits_total", outcome="conflict") == 1
    assert total(text, "bnaas_commits_total", outcome="duplicate") == 1
    assert total(text, "bnaas_commit_retries_total") == 1
    assert total(text, "bnaas_idempotent_replays_total") == 1


SUMMARY = {
    "max_kl": 0.5,
    "mean_kl": 0.25,
    "max_abs_mean_shift": 1.5,
    "max_abs_log_var_ratio": 0.1,
    "top_kl_channels": [2, 0],
}


def test_drift_gauges_hold_the_latest_summary_of_a_session() -> None:
    m = Metrics(drift_sessions=5)
    m.observe_drift("s1", {**SUMMARY, "max_kl": 9.0})
    m.observe_drift("s1", SUMMARY)
    text = m.exposition().decode()
    assert total(text, "bnaas_drift", session_id="s1", measure="max_kl") == 0.5
    assert total(text, "bnaas_drift", session_id="s1", measure="max_abs_mean_shift") == 1.5
    assert "top_kl_channels" not in text  # a list, not a gauge


def test_drift_gauges_exist_for_at_most_the_configured_number_of_sessions() -> None:
    m = Metrics(drift_sessions=2)
    for sid in ("s1", "s2", "s3", "s4", "s1"):
        m.observe_drift(sid, SUMMARY)
    text = m.exposition().decode()
    sessions = {dict(k)["session_id"] for k in samples(text, "bnaas_drift")}
    assert sessions == {"s1", "s2"}
    assert total(text, "bnaas_drift_sessions_dropped_total") == 2


def test_drift_flags_are_counted_without_a_session_label() -> None:
    m = Metrics()
    m.observe_flags(["kl", "mean_shift"])
    m.observe_flags(["kl"])
    text = m.exposition().decode()
    assert total(text, "bnaas_drift_flags_total", flag="kl") == 2
    assert total(text, "bnaas_drift_flags_total", flag="mean_shift") == 1


def test_drift_admission_is_shared_by_the_workers_through_the_directory(tmp_path: Path) -> None:
    worker_a, worker_b = _Admission(2, str(tmp_path)), _Admission(2, str(tmp_path))
    assert worker_a.admit("s1")
    assert worker_b.admit("s2")
    assert not worker_a.admit("s3")
    assert not worker_b.admit("s3")
    assert worker_b.admit("s1")  # admitted by the other worker


def test_serve_makes_a_fresh_metrics_directory_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    stale = tmp_path / "bnaas-metrics-999999999-old"  # a killed server's: no such pid
    stale.mkdir()
    with multiprocess_dir(str(tmp_path)) as directory:
        assert os.environ[ENV] == str(directory)
        assert directory.parent == tmp_path
        assert list(directory.iterdir()) == []
        assert not stale.exists()
        (directory / "counter_1.db").write_bytes(b"x")
    assert ENV not in os.environ
    assert not directory.exists()


def test_an_explicit_multiproc_dir_is_emptied_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"old")
    monkeypatch.setenv(ENV, str(given))
    with multiprocess_dir() as directory:
        assert directory == given
        assert list(given.iterdir()) == []
        (given / "counter_456.db").write_bytes(b"new")
    assert given.is_dir()
    assert list(given.iterdir()) == []


def _served_by(directory: Path) -> dict[str, float]:
    """/healthz requests per worker, read from each worker's own counter file."""
    out = {}
    for path in directory.glob("counter_*.db"):
        out[path.name] = sum(
            s.value
            for metric in MultiProcessCollector.merge([str(path)], accumulate=True)
            for s in metric.samples
            if s.name == "bnaas_requests_total" and s.labels.get("route") == "/healthz"
        )
    return out


@pytest.mark.slow
def test_two_workers_report_process_wide_totals_on_every_scrape(tmp_path: Path) -> None:
    parent = tmp_path / "metrics"
    server = Server(
        f"sqlite:///{tmp_path / 'bn.db'}",
        workers=2,
        log=tmp_path / "server.log",
        env={"BNAAS_METRICS_DIR": str(parent)},
    ).start()
    try:
        (directory,) = parent.iterdir()  # made by this start, shared by both workers
        sent = 0

        def hit(_: int) -> int:
            # A new connection each time, so that the kernel spreads them over the workers.
            with httpx.Client(base_url=server.url) as c:
                return c.get("/healthz").status_code

        with ThreadPoolExecutor(8) as pool:
            while sent < 2000:
                assert set(pool.map(hit, range(40))) == {200}
                sent += 40
                served = _served_by(directory)
                if len([n for n in served.values() if n > 0]) >= 2:
                    break
        assert len([n for n in _served_by(directory).values() if n > 0]) == 2, "one worker"
        for _ in range(10):
            with httpx.Client(base_url=server.url) as c:
                text = c.get("/metrics").text
            assert total(text, "bnaas_requests_total", route="/healthz") == sent
            assert total(text, "bnaas_request_seconds_count", route="/healthz") == sent
    finally:
        server.stop()
    assert list(parent.iterdir()) == []  # removed at exit


def test_the_grafana_dashboard_queries_only_metrics_the_service_exports(
    app_client: TestClient,
) -> None:
    m: Metrics = app_client.app.state.metrics  # type: ignore[attr-defined]
    m.observe_drift("s1", SUMMARY)
    m.observe_flags(["kl"])
    m.observe_retry()
    m.observe_replay()
    m.drift_dropped.inc()
    app_client.get("/healthz")
    exported = {
        s.name
        for family in text_string_to_metric_families(app_client.get("/metrics").text)
        for s in family.samples
    }
    dashboard = Path(__file__).parents[2] / "deploy" / "grafana" / "bnaas-dashboard.json"
    doc = json.loads(dashboard.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {name for e in exprs for name in re.findall(r"\bbnaas_[a-z_]+", e)}
    assert used - exported == set()


def test_a_multiproc_dir_set_after_prometheus_was_imported_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process imported prometheus_client without the variable: its values are per
    # process, so pretending to aggregate would report one worker's counts.
    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="set after prometheus_client was imported"):
        Metrics()


def test_in_multiprocess_mode_two_processes_add_up_and_the_newest_drift_wins(
    tmp_path: Path,
) -> None:
    # Each run is a fresh interpreter, as a worker is: the variable is set before the import.
    script = (
        "import sys; from service.metrics import Metrics; m = Metrics(drift_sessions=1); "
        "m.observe_op('fit', 10); "
        "m.observe_drift(sys.argv[1], {'max_kl': float(sys.argv[2])}); "
        "sys.stdout.write(m.exposition().decode())"
    )
    env = {**os.environ, ENV: str(tmp_path)}
    for sid, kl in (("s1", "1.0"), ("s1", "2.0"), ("s2", "3.0")):
        out = subprocess.run(
            [sys.executable, "-c", script, sid, kl], env=env, capture_output=True, check=True
        ).stdout.decode()
    assert total(out, "bnaas_operations_total", op="fit") == 3
    assert total(out, "bnaas_values_total", op="fit") == 30
    assert samples(out, "bnaas_drift") == {(("measure", "max_kl"), ("session_id", "s1")): 2.0}
    assert total(out, "bnaas_drift_sessions_dropped_total") == 1
