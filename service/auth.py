"""API keys, checked from the headers alone (``service.front.Front`` does it before the
application reads one byte of the body: nothing is inflated or parsed for a caller who is not
allowed); the caller's owner id goes to ``scope["state"]["owner"]``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from service.errors import Unauthorized

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


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The key in ``Authorization: Bearer KEY`` (which wins) or ``X-API-Key``."""
    given: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
        if name == b"x-api-key":
            given = value
    return given


def owner(keys: Sequence[bytes], path: str, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The owner id of the request's key; None when the path needs none or no keys are set
    (``BNAAS_API_KEYS``). Raises ``Unauthorized`` (401) for a missing or unknown key."""
    if not keys or not needs_key(path):
        return None
    given = presented_key(headers)
    if not given:
        raise Unauthorized("an API key is required: Authorization: Bearer KEY or X-API-Key")
    if not any(hmac.compare_digest(given, k) for k in keys):
        raise Unauthorized("the API key is not valid")
    return owner_id(given)
