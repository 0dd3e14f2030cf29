"""API keys as pure ASGI middleware: a data route's key is checked from the headers alone,
before the application reads one byte of the body (nothing is inflated or parsed for a caller
who is not allowed), and the caller's owner id goes to ``scope["state"]["owner"]``."""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import PROBLEM_JSON, Unauthorized, problem_body

# Data lives under /v1 and /v2; V2's health probes and server metadata stay open, as do the
# root probes, /metrics, the API docs and the dashboard's static files.
_PROTECTED = ("/v1/", "/v2/")
_OPEN = ("/v2/health/",)


def needs_key(path: str) -> bool:
    """Whether a request path is a data route (keys required when configured)."""
    if path in ("/v1", "/v1/"):
        return True
    return path.startswith(_PROTECTED) and not path.startswith(_OPEN)


def owner_id(key: bytes) -> str:
    """The owner id of a key: a digest, so that stores never hold the key itself."""
    return hashlib.sha256(key).hexdigest()[:32]


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key in ``Authorization: Bearer KEY`` (which wins) or ``X-API-Key``."""
    given: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
        if name == b"x-api-key":
            given = value
    return given


class ApiKeyAuth:
    """Answer 401 problem+json for a data route without a valid key (``BNAAS_API_KEYS``)."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.keys or not needs_key(scope.get("path", "")):
            state["owner"] = None
            await self.app(scope, receive, send)
            return
        given = presented_key(scope["headers"])
        if not given:
            detail = "an API key is required: Authorization: Bearer KEY or X-API-Key"
        elif not any(hmac.compare_digest(given, k) for k in self.keys):
            detail = "the API key is not valid"
        else:
            state["owner"] = owner_id(given)
            await self.app(scope, receive, send)
            return
        await _refuse(scope, send, detail)


async def _refuse(scope: Scope, send: Send, detail: str) -> None:
    err = Unauthorized(detail)
    body = problem_body(err.status, err.slug, err.title, detail, scope.get("path", ""))
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", err.headers["WWW-Authenticate"].encode()),
        (b"connection", b"close"),  # the unread body must not be taken for the next request
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
