"""The front layer: hot routes answered without FastAPI's stack keep its guarantees (problem+json
for unexpected errors, the streaming body limit, metrics by route template)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

import bncore
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import NPY, create, npy
from tests.service.test_metrics import total

X = np.arange(12, dtype=np.float32).reshape(4, 3)
TRANSFORM = "/v1/sessions/{session_id}/transform"


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(Settings(store="memory://", device="cpu", max_body_bytes=1 << 12))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_an_unexpected_error_on_a_hot_route_is_a_500_problem_counted_as_such(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = create(client)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(bncore, "transform", broken)
    r = client.post(f"/v1/sessions/{sid}/transform", content=npy(X), headers={"content-type": NPY})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "internal server error" and "a bug" not in r.text
    text = client.get("/metrics").text
    assert total(text, "bnaas_requests_total", route=TRANSFORM, status="500") == 1


def test_a_chunked_body_over_the_limit_on_a_hot_route_is_413(client: TestClient) -> None:
    sid = create(client)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        for _ in range(8):
            yield bytes(1024)

    r = client.post(
        f"/v1/sessions/{sid}/transform", content=chunks(), headers={"content-type": NPY}
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    text = client.get("/metrics").text
    assert total(text, "bnaas_requests_total", route=TRANSFORM, status="413") == 1


def test_hot_routes_are_counted_and_timed_by_template(client: TestClient) -> None:
    sid = create(client)
    for _ in range(3):
        r = client.post(
            f"/v1/sessions/{sid}/transform", content=npy(X), headers={"content-type": NPY}
        )
        assert r.status_code == 200
    text = client.get("/metrics").text
    assert sid not in text
    assert total(text, "bnaas_requests_total", route=TRANSFORM, status="200") == 3
    assert total(text, "bnaas_request_seconds_count", route=TRANSFORM, method="POST") == 3
    assert total(text, "bnaas_operations_total", op="transform") == 3
    assert total(text, "bnaas_values_total", op="transform") == 3 * X.size
