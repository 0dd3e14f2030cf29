"""The write path seen through HTTP: byte-identical replays from O(C) receipts, drift in fit
answers, the history route, create/DELETE/create, and store refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import cli
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import NPY, create, npy

BATCH = {"data": [[1.0, 2.0, 3.0], [3.0, 5.0, 4.0], [0.5, 1.0, 9.0]]}
K1 = {"X-API-Key": "key-one"}
K2 = {"X-API-Key": "key-two"}


def test_a_retried_json_fit_answers_the_first_bytes_and_applies_once(client: TestClient) -> None:
    sid = create(client)
    headers = {"Idempotency-Key": "fit-1"}
    first = client.post(f"/v1/sessions/{sid}/fit", json=BATCH, headers=headers)
    client.post(f"/v1/sessions/{sid}/fit", json={"data": [[9.0, 9, 9], [1, 2, 3]]})
    again = client.post(f"/v1/sessions/{sid}/fit", json=BATCH, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["etag"] == first.headers["etag"] == '"2"'
    assert client.get(f"/v1/sessions/{sid}").json()["num_batches_tracked"] == 2


def test_a_retried_npy_fit_answers_the_first_bytes_and_headers(client: TestClient) -> None:
    sid = create(client)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    headers = {"Idempotency-Key": "npy-1", "Content-Type": NPY, "Accept": NPY}
    first = client.post(f"/v1/sessions/{sid}/fit", content=npy(x), headers=headers)
    client.post(f"/v1/sessions/{sid}/fit", json=BATCH)  # moves the weights' successor state
    client.put(f"/v1/sessions/{sid}/stats", json={"weight": [2.0, 3.0, 4.0], "eps": 0.5})
    again = client.post(f"/v1/sessions/{sid}/fit", content=npy(x), headers=headers)
    assert again.content == first.content
    for name in ("etag", "bn-num-batches-tracked", "bn-batch-mean", "bn-batch-var"):
        assert again.headers[name] == first.headers[name]


def test_a_retried_fit_without_output_answers_the_first_bytes(client: TestClient) -> None:
    sid = create(client)
    headers = {"Idempotency-Key": "stats-only"}
    url = f"/v1/sessions/{sid}/fit?output=false"
    first = client.post(url, json=BATCH, headers=headers)
    again = client.post(url, json=BATCH, headers=headers)
    assert again.content == first.content
    assert "data" not in first.json()


def test_a_retried_v2_fit_answers_the_first_bytes(client: TestClient) -> None:
    sid = create(client)
    body = {
        "inputs": [{"name": "INPUT", "shape": [3, 3], "datatype": "FP32", "data": BATCH["data"]}],
        "parameters": {"mode": "fit"},
    }
    headers = {"Idempotency-Key": "v2-fit"}
    first = client.post(f"/v2/models/{sid}/infer", json=body, headers=headers)
    client.post(f"/v1/sessions/{sid}/fit", json=BATCH)
    again = client.post(f"/v2/models/{sid}/infer", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert client.get(f"/v1/sessions/{sid}").json()["num_batches_tracked"] == 2


def test_a_key_reused_with_another_body_is_422_and_changes_nothing(client: TestClient) -> None:
    sid = create(client)
    headers = {"Idempotency-Key": "k"}
    client.post(f"/v1/sessions/{sid}/fit", json=BATCH, headers=headers)
    other = client.post(
        f"/v1/sessions/{sid}/fit", json={"data": [[0, 1, 2], [3, 4, 5]]}, headers=headers
    )
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/sessions/{sid}").json()["version"] == 2


def test_a_retried_backward_step_answers_the_first_bytes(client: TestClient) -> None:
    sid = create(client)
    body = {"data": BATCH["data"], "grad_output": [[1.0, 0, 2], [0, 1, 0], [3, 0, 1]]}
    headers = {"Idempotency-Key": "step"}
    url = f"/v1/sessions/{sid}/backward?lr=0.1"
    first = client.post(url, json=body, headers=headers)
    client.post(url, json=body)  # another step moves the weights
    again = client.post(url, json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert again.content == first.content
    assert client.get(f"/v1/sessions/{sid}").json()["version"] == 3


def test_create_delete_then_the_same_create_makes_a_new_session(client: TestClient) -> None:
    headers = {"Idempotency-Key": "create-again"}
    spec = {"num_features": 2}
    first = client.post("/v1/sessions", json=spec, headers=headers)
    replay = client.post("/v1/sessions", json=spec, headers=headers)
    assert replay.content == first.content
    assert replay.headers["location"] == first.headers["location"]
    assert client.delete(first.headers["location"]).status_code == 204
    again = client.post("/v1/sessions", json=spec, headers=headers)
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.headers["location"] != first.headers["location"]
    assert client.get(again.headers["location"]).status_code == 200


def test_fit_answers_carry_drift_against_the_running_statistics(client: TestClient) -> None:
    sid = create(client)
    doc = client.post(f"/v1/sessions/{sid}/fit", json=BATCH).json()
    drift = doc["drift"]
    assert set(drift) == {"mean_shift", "log_var_ratio", "kl", "summary", "flags"}
    x = np.array(BATCH["data"])
    eps = 1e-5
    vb, vr = x.var(axis=0) + eps, 1.0 + eps
    np.testing.assert_allclose(drift["mean_shift"], x.mean(axis=0) / np.sqrt(vr))
    np.testing.assert_allclose(drift["log_var_ratio"], np.log(vb / vr))
    kl = 0.5 * (np.log(vr / vb) + (vb + x.mean(axis=0) ** 2) / vr - 1)
    np.testing.assert_allclose(drift["kl"], kl)
    assert drift["summary"]["max_kl"] == pytest.approx(kl.max())
    assert drift["flags"] == []  # no thresholds configured


def test_fit_drift_is_null_without_running_statistics(client: TestClient) -> None:
    sid = create(client, track_running_stats=False)
    assert client.post(f"/v1/sessions/{sid}/fit", json=BATCH).json()["drift"] is None


def _fits(client: TestClient, sid: str, n: int) -> None:
    for i in range(n):
        r = client.post(
            f"/v1/sessions/{sid}/fit?output=false", json={"data": [[i, 1, 2], [3, i, 5]]}
        )
        assert r.status_code == 200


def test_history_lists_fits_newest_first_with_pages(client: TestClient) -> None:
    sid = create(client)
    _fits(client, sid, 5)
    page = client.get(f"/v1/sessions/{sid}/history?limit=2").json()
    assert page["session_id"] == sid
    assert page["order"] == "newest-first"
    assert [f["version"] for f in page["fits"]] == [6, 5]
    assert page["next_before"] == 5
    newest = page["fits"][0]
    assert newest["num_batches_tracked"] == 5
    assert newest["count"] == 2
    assert newest["full"] is True
    assert newest["time"].endswith("Z")
    np.testing.assert_allclose(newest["mean"], [3.5, 2.5, 3.5])
    np.testing.assert_allclose(newest["var"], [0.25, 2.25, 2.25])
    assert set(newest["drift"]) == {"mean_shift", "log_var_ratio", "kl"}
    assert set(newest["summary"]) >= {"max_kl", "mean_kl", "top_kl_channels"}
    rest = client.get(f"/v1/sessions/{sid}/history?limit=10&before=5").json()
    assert [f["version"] for f in rest["fits"]] == [4, 3, 2]
    assert rest["next_before"] is None


def test_stats_export_adds_history_on_request(client: TestClient) -> None:
    sid = create(client)
    _fits(client, sid, 3)
    assert "history" not in client.get(f"/v1/sessions/{sid}/stats").json()
    doc = client.get(f"/v1/sessions/{sid}/stats?history=2").json()
    assert [f["version"] for f in doc["history"]] == [4, 3]


def test_history_of_a_missing_session_is_404(client: TestClient) -> None:
    assert client.get("/v1/sessions/nope/history").status_code == 404


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def keyed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    store = {
        "memory": lambda: "memory://",
        "sqlite": lambda: f"sqlite:///{tmp_path / 'k.db'}",
        "redis": lambda: str(request.getfixturevalue("redis_url")),  # a real redis-server
    }[request.param]()
    settings = Settings(store=store, device="cpu", api_keys="key-one,key-two")
    with TestClient(create_app(settings)) as c:
        yield c


def test_another_keys_session_history_and_fits_are_404(keyed: TestClient) -> None:
    sid = keyed.post("/v1/sessions", json={"num_features": 3}, headers=K1).json()["id"]
    keyed.post(f"/v1/sessions/{sid}/fit", json=BATCH, headers=K1)
    missing = keyed.get("/v1/sessions/nope/history", headers=K2)
    for method, url, body in (
        ("GET", f"/v1/sessions/{sid}/history", None),
        ("POST", f"/v1/sessions/{sid}/fit", BATCH),
        ("POST", f"/v1/sessions/{sid}/reset", None),
        ("DELETE", f"/v1/sessions/{sid}", None),
    ):
        r = keyed.request(method, url, json=body, headers=K2)
        assert r.status_code == 404
        assert r.json()["title"] == missing.json()["title"]
    assert keyed.get(f"/v1/sessions/{sid}", headers=K1).json()["version"] == 2


def test_create_keys_are_per_api_key(keyed: TestClient) -> None:
    spec: dict[str, Any] = {"num_features": 2}
    a = keyed.post("/v1/sessions", json=spec, headers={**K1, "Idempotency-Key": "same"})
    b = keyed.post("/v1/sessions", json=spec, headers={**K2, "Idempotency-Key": "same"})
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers


def test_the_memory_store_refuses_two_workers_at_startup() -> None:
    app = create_app(Settings(store="memory://", device="cpu", workers=2))
    with pytest.raises(ValueError, match="one process"), TestClient(app):
        pass


def test_the_cli_refuses_memory_with_two_workers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNAAS_WORKERS", "1")  # the CLI sets both: restored afterwards
    monkeypatch.setenv("BNAAS_STORE", "memory://")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--store", "memory://", "--workers", "2"])
    assert exit_.value.code == 2
    assert "cannot serve 2 worker processes" in capsys.readouterr().err
