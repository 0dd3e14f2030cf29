"""API keys: every data route needs one, and a key sees only its own sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

K1 = {"Authorization": "Bearer key-one"}
K2 = {"X-API-Key": "key-two"}
BATCH = {"data": [[1.0, 2.0], [3.0, 5.0]]}


@pytest.fixture(params=["memory", "sqlite"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    store = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'a.db'}"
    with TestClient(
        create_app(Settings(store=store, device="cpu", api_keys="key-one, key-two"))
    ) as c:
        yield c


def test_missing_or_wrong_key_is_401_with_challenge(client: TestClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "nope"},
        {"Authorization": "Basic a2V5"},
    ):
        r = client.post("/v1/sessions", json={"num_features": 2}, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/sessions", headers=K1).json()["sessions"] == []


def test_probes_stay_open(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/v2"):
        assert client.get(path).status_code == 200, path


def test_a_key_sees_only_its_own_sessions(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={"num_features": 2}, headers=K1).json()["id"]
    assert client.post(f"/v1/sessions/{sid}/fit", json=BATCH, headers=K1).status_code == 200
    for method, path, body in (
        ("GET", f"/v1/sessions/{sid}", None),
        ("POST", f"/v1/sessions/{sid}/fit", BATCH),
        ("POST", f"/v1/sessions/{sid}/transform", BATCH),
        ("GET", f"/v1/sessions/{sid}/stats", None),
        ("PUT", f"/v1/sessions/{sid}/stats", {"eps": 0.1}),
        ("POST", f"/v1/sessions/{sid}/reset", None),
        ("DELETE", f"/v1/sessions/{sid}", None),
        ("GET", f"/v2/models/{sid}", None),
    ):
        r = client.request(method, path, json=body, headers={**K2, "If-Match": '"99"'})
        assert r.status_code == 404, (method, path, r.status_code)
    assert client.get("/v1/sessions", headers=K2).json()["sessions"] == []
    assert [s["id"] for s in client.get("/v1/sessions", headers=K1).json()["sessions"]] == [sid]
    assert client.get(f"/v1/sessions/{sid}", headers=K1).json()["num_batches_tracked"] == 1


def test_idempotency_keys_are_per_api_key(client: TestClient) -> None:
    a = client.post(
        "/v1/sessions", json={"num_features": 2}, headers={**K1, "Idempotency-Key": "same"}
    )
    b = client.post(
        "/v1/sessions", json={"num_features": 2}, headers={**K2, "Idempotency-Key": "same"}
    )
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
