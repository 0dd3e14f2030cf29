"""In-process app fixtures: TestClient as a context manager so that the lifespan runs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

NPY = "application/x-npy"


def npy(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def from_npy(data: bytes) -> np.ndarray[Any, Any]:
    return np.load(io.BytesIO(data), allow_pickle=False)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    store = {
        "memory": lambda: "memory://",
        "sqlite": lambda: f"sqlite:///{tmp_path / 'bn.db'}",
        "redis": lambda: str(request.getfixturevalue("redis_url")),  # a real redis-server
    }[request.param]()
    app = create_app(Settings(store=store, device="cpu", max_body_bytes=1 << 20))
    with TestClient(app) as c:
        yield c


def create(client: TestClient, **config: Any) -> str:
    r = client.post("/v1/sessions", json={"num_features": 3, **config})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def state_of(client: TestClient, sid: str) -> dict[str, Any]:
    r = client.get(f"/v1/sessions/{sid}/stats")
    assert r.status_code == 200
    return dict(r.json())
