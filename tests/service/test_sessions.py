"""Session lifecycle routes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import create


def test_create_returns_201_location_etag_and_resolved_config(client: TestClient) -> None:
    r = client.post("/v1/sessions", json={"num_features": 4, "momentum": None, "name": "layer1"})
    assert r.status_code == 201
    body = r.json()
    assert r.headers["location"] == f"/v1/sessions/{body['id']}"
    assert r.headers["etag"] == '"1"'
    assert body["config"] == {
        "num_features": 4,
        "eps": 1e-5,
        "momentum": None,
        "affine": True,
        "track_running_stats": True,
        "channel_axis": 1,
        "dtype": "float32",
        "nan_policy": "reject",
        "convention": "torch",
        "drift_max_kl": None,
        "drift_max_mean_shift": None,
        "drift_metrics": False,
    }
    assert body["name"] == "layer1"
    assert body["num_batches_tracked"] == 0
    assert len(body["id"]) >= 20  # unguessable


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"num_features": 0},
        {"num_features": "3"},
        {"num_features": 3.5},
        {"num_features": 3, "eps": 0},
        {"num_features": 3, "eps": -1},
        {"num_features": 3, "momentum": 1.5},
        {"num_features": 3, "channel_axis": 2},
        {"num_features": 3, "dtype": "int8"},
        {"num_features": 3, "nan_policy": "skip"},
        {"num_features": 3, "unknown": 1},
        {"num_features": 3, "weight": [1.0, 2.0]},
        {"num_features": 3, "affine": False, "weight": [1.0, 1.0, 1.0]},
    ],
)
def test_invalid_create_is_422_problem_and_creates_nothing(client: TestClient, spec: dict) -> None:
    r = client.post("/v1/sessions", json=spec)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["error"] == r.json()["detail"]
    assert client.get("/v1/sessions").json()["sessions"] == []


def test_create_with_non_json_body_is_a_400_problem_as_everywhere(client: TestClient) -> None:
    r = client.post("/v1/sessions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"


def test_list_pages_by_id(client: TestClient) -> None:
    ids = sorted(create(client) for _ in range(5))
    page = client.get("/v1/sessions", params={"limit": 2}).json()
    assert [s["id"] for s in page["sessions"]] == ids[:2]
    rest = client.get("/v1/sessions", params={"limit": 10, "after": page["next_after"]}).json()
    assert [s["id"] for s in rest["sessions"]] == ids[2:]
    assert "next_after" not in rest


def test_get_unknown_session_is_404_problem(client: TestClient) -> None:
    r = client.get("/v1/sessions/does-not-exist")
    assert r.status_code == 404
    assert r.json()["error"] == "session 'does-not-exist' not found"


def test_delete_removes_the_session(client: TestClient) -> None:
    sid = create(client)
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    assert client.get(f"/v1/sessions/{sid}").status_code == 404
    assert client.delete(f"/v1/sessions/{sid}").status_code == 404


def test_delete_with_stale_if_match_is_412_and_keeps_the_session(client: TestClient) -> None:
    sid = create(client)
    assert client.delete(f"/v1/sessions/{sid}", headers={"If-Match": '"7"'}).status_code == 412
    assert client.get(f"/v1/sessions/{sid}").status_code == 200
    assert client.delete(f"/v1/sessions/{sid}", headers={"If-Match": '"1"'}).status_code == 204


def test_malformed_if_match_is_400(client: TestClient) -> None:
    sid = create(client)
    r = client.delete(f"/v1/sessions/{sid}", headers={"If-Match": "banana"})
    assert r.status_code == 400


def test_create_with_idempotency_key_is_applied_once(client: TestClient) -> None:
    headers = {"Idempotency-Key": "create-1"}
    first = client.post("/v1/sessions", json={"num_features": 3}, headers=headers)
    again = client.post("/v1/sessions", json={"num_features": 3}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(client.get("/v1/sessions").json()["sessions"]) == 1
    other = client.post("/v1/sessions", json={"num_features": 4}, headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["detail"]


def test_reset_restores_initial_statistics_and_keeps_weight(client: TestClient) -> None:
    sid = create(client, weight=[2.0, 2.0, 2.0])
    client.post(f"/v1/sessions/{sid}/fit", json={"data": [[1, 2, 3], [4, 5, 7]]})
    r = client.post(f"/v1/sessions/{sid}/reset")
    assert r.status_code == 200
    assert r.json()["num_batches_tracked"] == 0
    stats = client.get(f"/v1/sessions/{sid}/stats").json()
    assert stats["running_mean"] == [0, 0, 0]
    assert stats["running_var"] == [1, 1, 1]
    assert stats["weight"] == [2, 2, 2]
    assert stats["population"]["count"] == [0, 0, 0]
    client.post(f"/v1/sessions/{sid}/reset", params={"parameters": "true"})
    assert client.get(f"/v1/sessions/{sid}/stats").json()["weight"] == [1, 1, 1]


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    r = client.get("/v1/nowhere")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    r = client.put("/v1/sessions")
    assert r.status_code == 405
    assert r.json()["status"] == 405


def test_probes_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["backend"] == "numpy"
    assert ready["cpu_kernels"] is True
    metrics = client.get("/metrics").text
    assert 'bnaas_requests_total{method="GET",route="/readyz",status="200"} 1.0' in metrics


def test_openapi_documents_every_route_and_binary_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/fit",
        "/v1/sessions/{session_id}/transform",
        "/v1/sessions/{session_id}/backward",
        "/v1/sessions/{session_id}/fold",
        "/v1/sessions/{session_id}/stats",
        "/v1/sessions/{session_id}/reset",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    fit = paths["/v1/sessions/{session_id}/fit"]["post"]
    assert set(fit["requestBody"]["content"]) == {"application/json", "application/x-npy"}
    names = {p["name"] for p in fit["parameters"]}
    assert {"session_id", "output", "If-Match", "Idempotency-Key"} <= names
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert "Problem" in spec["components"]["schemas"]
