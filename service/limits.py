"""The request body limit (``BNAAS_MAX_BODY_BYTES``): by ``Content-Length`` before the body is
read, and while streaming when the length is not declared (chunked transfer)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Message, Receive

from service.errors import BodyTooLarge, MalformedBody


def declared_length(headers: Sequence[tuple[bytes, bytes]], max_bytes: int) -> int | None:
    """The ``Content-Length``, or None when there is none. Raises ``MalformedBody`` (400) for
    one that is not a number and ``BodyTooLarge`` (413) for one over ``max_bytes``."""
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise MalformedBody(f"invalid Content-Length {value!r}")
            length = int(value)
            if length > max_bytes:
                raise BodyTooLarge(f"body of {length} bytes exceeds {max_bytes}")
            return length
    return None


def limited(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises ``BodyTooLarge`` once the body passes ``max_bytes``.

    Only for a body of undeclared length: the HTTP parser ends a declared one at its
    ``Content-Length``, which ``declared_length`` has already checked."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise BodyTooLarge(f"body exceeds {max_bytes} bytes")
        return message

    return receive_limited
