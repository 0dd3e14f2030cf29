"""API keys at the front: the key is checked from the headers alone, before one body byte is
received."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from service.app import create_app
from service.auth import needs_key, owner_id
from service.front import Front
from service.metrics import Metrics
from service.settings import Settings


def _front(keys: list[str]) -> Front:
    return Front(_inner, Metrics(), keys, max_body_bytes=1 << 20)


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


def _run(app: Any, scope: dict[str, Any]) -> tuple[list[Message], bool]:
    sent: list[Message] = []
    received = False

    async def receive() -> Message:
        nonlocal received
        received = True
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, received


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()  # an app that reads the body
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["state"]["owner"].encode()})


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer nope")],
        [(b"x-api-key", b"nope")],
        [(b"authorization", b"Basic k")],
    ],
)
def test_refused_caller_gets_401_and_the_body_is_never_received(
    headers: list[tuple[bytes, bytes]],
) -> None:
    sent, received = _run(_front(["k1"]), _scope("/v1/sessions/x/fit", headers))
    assert sent[0]["status"] == 401
    assert (b"www-authenticate", b'Bearer realm="bnaas"') in sent[0]["headers"]
    assert not received


def test_allowed_caller_has_its_owner_in_the_scope_state() -> None:
    scope = _scope("/v1/sessions", [(b"x-api-key", b"k1")])
    sent, received = _run(_front(["k1"]), scope)
    assert sent[0]["status"] == 200 and received
    assert sent[1]["body"] == owner_id(b"k1").encode() == scope["state"]["owner"].encode()


@pytest.mark.parametrize(
    ("path", "guarded"),
    [
        ("/v1", True),
        ("/v1/sessions", True),
        ("/v2/models/x/infer", True),
        ("/v2/health/live", False),
        ("/v2", False),
        ("/healthz", False),
        ("/readyz", False),
        ("/metrics", False),
        ("/docs", False),
        ("/openapi.json", False),
        ("/ui/app.js", False),
    ],
)
def test_data_routes_need_a_key_and_probes_docs_and_ui_do_not(path: str, guarded: bool) -> None:
    assert needs_key(path) is guarded


def test_owner_of_reads_what_the_middleware_found() -> None:
    app = create_app(Settings(store="memory://", device="cpu", api_keys="k1,k2"))
    with TestClient(app) as client:
        a = client.post("/v1/sessions", json={"num_features": 2}, headers={"X-API-Key": "k1"})
        assert a.status_code == 201
        sid = a.json()["id"]
        assert client.get(f"/v1/sessions/{sid}", headers={"X-API-Key": "k2"}).status_code == 404
        assert client.get(f"/v1/sessions/{sid}", headers={"X-API-Key": "k1"}).status_code == 200
        assert client.get("/openapi.json").status_code == 200
