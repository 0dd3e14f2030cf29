"""Every route x every media type: never a 500; every 4xx is problem+json and changes nothing.

The routes come from the app itself, so a new route is covered the day it is added.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import npy
from tests.service.wire import npy_header, npy_raw, safetensors_of, v2_binary, v2_json

X = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0], [7.0, 9.0, 10.0], [2.0, 0.0, 1.0]], np.float32)
JSON_DOC = (
    b'{"data": [[1, 2, 3], [4, 6, 5]], "grad_output": [[1, 0, 0], [0, 1, 0]], '
    b'"weight": [[1], [2], [3]], "num_features": 3}'
)
V2_BODY, V2_HEADERS = v2_binary("FP32", [4, 3], X.tobytes())
SAFETENSORS = safetensors.numpy.save({"data": X, "grad_output": X, "weight": X.T.copy()})
GARBAGE = bytes(range(256)) * 3
NPY = "application/x-npy"
JSON = {"content-type": "application/json"}
BF16 = safetensors_of(
    {
        "data": ("BF16", [4, 3], bytes(24)),
        "grad_output": ("BF16", [4, 3], bytes(24)),
        "weight": ("F8_E4M3", [3, 1], bytes(3)),
    }
)

# (name, body, headers): the media types a client may send, well-formed or not.
BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    ("json", JSON_DOC, {"content-type": "application/json"}),
    ("npy", npy(X), {"content-type": "application/x-npy"}),
    ("safetensors", SAFETENSORS, {"content-type": "application/x-safetensors"}),
    ("v2-binary", V2_BODY, {**V2_HEADERS, "content-type": "application/octet-stream"}),
    (
        "gzip-json",
        gzip.compress(JSON_DOC),
        {"content-type": "application/json", "content-encoding": "gzip"},
    ),
    (
        "gzip-junk",
        gzip.compress(npy(X)) + b"x",
        {"content-type": "application/x-npy", "content-encoding": "gzip"},
    ),
    ("garbage-json", GARBAGE, {"content-type": "application/json"}),
    ("garbage-npy", GARBAGE, {"content-type": "application/x-npy"}),
    ("garbage-safetensors", GARBAGE, {"content-type": "application/x-safetensors"}),
    ("garbage-v2", GARBAGE, {"Inference-Header-Content-Length": "7"}),
    ("garbage-gzip", GARBAGE, {"content-type": "application/json", "content-encoding": "gzip"}),
    ("unknown-type", JSON_DOC, {"content-type": "text/csv"}),
    # Near misses that were 500s (issue 7).
    ("npy-descr-f3", npy_raw(npy_header("<f3", "(4, 3)"), bytes(36)), {"content-type": NPY}),
    ("npy-shape-2-3", npy_raw(npy_header("<f4", "(2 3,)"), bytes(24)), {"content-type": NPY}),
    ("safetensors-bf16", BF16, {"content-type": "application/x-safetensors"}),
    ("v2-datatype-list", v2_json([], [4, 3], X.tolist()), {"content-type": "application/json"}),
    ("json-huge-shape", b'{"data": [], "shape": [0, 18446744073709551615]}', JSON),
    ("if-match-5000-digits", JSON_DOC, {**JSON, "if-match": '"' + "9" * 5000 + '"'}),
    ("empty", b"", {}),
    ("empty-json", b"", {"content-type": "application/json"}),
    ("empty-npy", b"", {"content-type": "application/x-npy"}),
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(store="memory://", device="cpu", max_body_bytes=1 << 20))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _routes() -> list[tuple[str, str]]:
    """Every documented operation (FastAPI nests included routers, so read the schema)."""
    paths = create_app(Settings(store="memory://", device="cpu")).openapi()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() for m in ops if m != "parameters"]


ROUTES = _routes()


def _version(client: TestClient, sid: str) -> tuple[int, int] | None:
    r = client.get(f"/v1/sessions/{sid}")
    if r.status_code == 404:
        return None
    body = r.json()
    return body["version"], body["num_batches_tracked"]


def test_every_route_is_listed() -> None:
    paths = {p for _, p in ROUTES}
    assert {"/v1/sessions/{session_id}/fit", "/v2/models/{session_id}/infer"} <= paths


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_body_of_any_media_type_gets_a_500(client: TestClient, method: str, path: str) -> None:
    for name, body, headers in BODIES:
        sid = client.post("/v1/sessions", json={"num_features": 3}).json()["id"]
        url = path.replace("{session_id}", sid).replace("{version}", "1")
        before = _version(client, sid)
        for accept in (None, "application/x-npy, application/x-safetensors;q=0.5"):
            sent = {**headers, **({"accept": accept} if accept else {})}
            r = client.request(method, url, content=body, headers=sent)
            assert r.status_code < 500, (name, accept, r.status_code, r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"] == "application/problem+json", (name, r.text)
                problem = r.json()
                assert problem["status"] == r.status_code and problem["detail"], (name, problem)
                assert _version(client, sid) == before, (name, accept, "changed on a 4xx")
            else:
                before = _version(client, sid)
