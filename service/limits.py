"""Request body limit as pure ASGI middleware: 413 problem+json before the body is read
when Content-Length says too much, and while streaming when it does not."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PROBLEM_JSON, BodyTooLarge, MalformedBody, problem_body


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (``BNAAS_MAX_BODY_BYTES``)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await self._refuse(scope, send, 400, f"invalid Content-Length {value!r}")
                    return
                if int(value) > self.max_bytes:
                    await self._refuse(
                        scope, send, 413, f"body of {int(value)} bytes exceeds {self.max_bytes}"
                    )
                    return
        seen = 0
        limit = self.max_bytes

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"body exceeds {limit} bytes")
            return message

        await self.app(scope, limited, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
        kind = BodyTooLarge if status == 413 else MalformedBody
        body = problem_body(status, kind.slug, kind.title, detail, scope.get("path", ""))
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the unread body must not be taken for the next request
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
