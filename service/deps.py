"""Typed dependencies: the only readers of ``app.state`` and of request headers that
routes share (body, If-Match, Idempotency-Key).

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in the thread pool,
a hop that costs more than these lookups themselves (measured: ~0.3 ms per request each).
Headers are read from the request rather than declared as ``Header()`` parameters, which
FastAPI validates on every request; ``routes/openapi.py`` documents them instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from bncore import Backend
from service.codecs import decompress
from service.commit import Commits
from service.errors import MalformedBody, Unauthorized
from service.metrics import Metrics
from service.settings import Settings
from service.stores import Store
from service.stores.base import Idempotency, IfMatch
from service.stores.owned import OwnedStore


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_raw_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def owner_of(request: Request) -> str | None:
    """The caller's owner id (a digest of its API key), as ``service.front.Front`` found
    it before the body was read; None when no keys are configured."""
    state = request.scope.get("state") or {}
    if "owner" in state:
        owner: str | None = state["owner"]
        return owner
    settings: Settings = request.app.state.settings
    if settings.key_list():  # a route the middleware did not guard: never serve it unkeyed
        raise Unauthorized("an API key is required: Authorization: Bearer KEY or X-API-Key")
    return None


async def get_backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def get_store(request: Request) -> Store:
    """The store as the caller may see it (all of it when authentication is off)."""
    store: Store = request.app.state.store
    owner = owner_of(request)
    return store if owner is None else OwnedStore(store, owner)


async def get_commits(request: Request) -> Commits:
    """The commit loop of this process (service/commit.py): every state change goes there."""
    commits: Commits = request.app.state.commits
    return commits


SettingsDep = Annotated[Settings, Depends(get_settings)]
CommitsDep = Annotated[Commits, Depends(get_commits)]
RawStoreDep = Annotated[Store, Depends(get_raw_store)]
StoreDep = Annotated[Store, Depends(get_store)]
BackendDep = Annotated[Backend, Depends(get_backend)]


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


@dataclass(frozen=True)
class Body:
    """A request body, decompressed, with the headers that say how to read and answer it."""

    data: bytes
    content_type: str | None
    accept: str | None


async def get_body(request: Request) -> Body:
    """``read_body`` as a dependency."""
    settings: Settings = request.app.state.settings
    return await read_body(request, headers_of(request), settings)


# The request headers the routes read (body, negotiation, If-Match, Idempotency-Key, V2);
# ``headers_of`` finds them in one pass.
_WANTED = frozenset(
    {
        b"content-type",
        b"content-encoding",
        b"accept",
        b"idempotency-key",
        b"if-match",
        b"inference-header-content-length",
    }
)


def headers_of(request: Request) -> dict[bytes, str]:
    """The headers of ``_WANTED`` the request has, the first of each name (as Starlette's
    ``Headers.get``), latin-1 decoded. One pass over the raw list: building Starlette's
    ``Headers`` and looking names up in it cost ~4 us a request (issue 10)."""
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def read_body(request: Request, headers: dict[bytes, str], settings: Settings) -> Body:
    """The body, read only now (after the key check in ``service.front``), inflated within
    ``BNAAS_MAX_BODY_BYTES`` and ``BNAAS_MAX_INFLATE_RATIO``; ``headers`` from ``headers_of``.

    The ``receive`` messages are read here and a body that came in one message is used as it
    is (Starlette's ``Request.body`` streams it through a generator and joins a list of one).
    The body is left where ``Request.body`` finds it, for the helpers that read it again
    (``get_idempotency``), and taken from there when one of them read it first."""
    raw: bytes | None = getattr(request, "_body", None)
    if raw is None:
        raw = await _receive_body(request.receive)
        request._body = raw  # Starlette's own cache: ``Request.body()`` returns it from now on
    encoding = headers.get(b"content-encoding")
    data = (
        raw
        if encoding is None
        else decompress(raw, encoding, settings.max_body_bytes, settings.max_inflate_ratio)
    )
    return Body(data, headers.get(b"content-type"), headers.get(b"accept"))


async def _receive_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


BodyDep = Annotated[Body, Depends(get_body)]


_DIGITS = frozenset("0123456789")


def parse_if_match(value: str | None) -> IfMatch:
    """``"7"`` -> 7; a list ``"3", "4"`` -> {3, 4} (RFC 9110: matches any); ``*`` or absent ->
    None (any version). Versions are ASCII digits below 2^63; anything else is a 400."""
    if value is None or value.strip() == "*":
        return None
    versions = set()
    for part in value.split(","):
        tag = part.strip().removeprefix("W/")
        digits = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
        if not digits or len(digits) > 18 or not _DIGITS.issuperset(digits):
            raise MalformedBody(
                f'If-Match must be ETags such as "3" or "3", "4", got {value[:60]!r}'
            )
        versions.add(int(digits))
    return next(iter(versions)) if len(versions) == 1 else frozenset(versions)


async def get_if_match(request: Request) -> IfMatch:
    return parse_if_match(request.headers.get("if-match"))


IfMatchDep = Annotated[IfMatch, Depends(get_if_match)]


async def get_idempotency(request: Request) -> Idempotency | None:
    """The ``Idempotency-Key`` with a fingerprint of everything that makes the request."""
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        return None
    key = idempotency_key.strip().strip('"')
    if not key or len(key) > 255:
        raise MalformedBody("Idempotency-Key must be 1 to 255 characters")
    digest = hashlib.sha256()
    for part in (
        request.method,
        request.url.path,
        request.url.query,
        request.headers.get("content-type", ""),
        request.headers.get("content-encoding", ""),
        request.headers.get("accept", ""),
    ):
        digest.update(part.encode() + b"\0")
    digest.update(await request.body())
    return Idempotency(key, digest.hexdigest())


IdempotencyDep = Annotated[Idempotency | None, Depends(get_idempotency)]
