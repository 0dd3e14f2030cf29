"""The one ASGI layer every HTTP request passes first: metrics, API key, body limit, and the
hot routes called directly.

Measured (issue 10): for a small request each ASGI layer costs a coroutine and a wrapped
``send``/``receive``, and FastAPI stacks eight of them before the router (server errors,
telemetry, its own body limit, ours three, exception handlers, an exit stack). ``Front`` does
ours in one: it times and counts the request (by route template, ``service.metrics``), checks
the API key from the headers (401 before the body is read, ``service.auth``) and the declared
body size (413 before the body is read, ``service.limits``). A request for a hot route
(``service.routes.hot``: transform, fit, V2 infer) then goes straight to that route's handler
with the app's exception handlers; every other request goes down FastAPI's whole stack. An
exception no handler took is answered with the app's 500 problem (unless an answer was already
started) and raised again, as Starlette's ``ServerErrorMiddleware`` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from service import auth, limits
from service.errors import PROBLEM_JSON, ServiceError, problem_body
from service.metrics import Metrics

__all__ = ["Front", "Hot"]


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Hot:
    """What ``Front`` needs to answer hot routes itself: each route (for matching; its path is
    the metrics label) with its handler (``request -> response``), the exception handlers by
    type and by status, and the app's router (``request.app``'s, for ``url_for``)."""

    routes: Sequence[tuple[BaseRoute, Handler]]
    handlers: tuple[dict[Any, ExceptionHandler], dict[int, ExceptionHandler]]
    router: ASGIApp

    def handler_for(self, exc: Exception) -> ExceptionHandler | None:
        """The handler for ``exc``, as Starlette picks it: by status for an HTTP error, else
        by the nearest class in its MRO."""
        by_type, by_status = self.handlers
        if isinstance(exc, HTTPException) and exc.status_code in by_status:
            return by_status[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in by_type:
                return by_type[cls]
        return None


class Front:
    """Metrics, API key and body limit for every HTTP request; hot routes dispatched here."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        keys: Sequence[str],
        max_body_bytes: int,
        on_error: Callable[[Request, Exception], Any] | None = None,
        hot: Hot | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = [k.encode() for k in keys]
        self.max_body_bytes = max_body_bytes
        self.on_error = on_error
        self.hot = hot
        # Each hot route with the fixed tail of its path ("/infer" for
        # "/v2/models/{session_id}/infer"): a str.endswith rules out most routes for a fraction
        # of what Route.matches costs (~0.6 us each).
        self.hot_routes = [
            (route, handler, _fixed_tail(getattr(route, "path", "")))
            for route, handler in (hot.routes if hot is not None else ())
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 0  # none sent yet

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._serve(scope, receive, record)
        except Exception as exc:
            if not status and self.on_error is not None:
                answer = self.on_error(Request(scope, receive), exc)
                response: Response = await answer if inspect.isawaitable(answer) else answer
                await response(scope, receive, record)
            raise
        finally:
            self.metrics.observe_request(
                scope["method"], _route_label(scope), status or 500, perf_counter() - start
            )

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        try:
            # The key first: a caller without one learns nothing, not even the body limit.
            owner = auth.owner(self.keys, scope["path"], headers)
            declared = limits.declared_length(headers, self.max_body_bytes)
        except ServiceError as err:
            await refuse(scope, send, err)
            return
        scope.setdefault("state", {})["owner"] = owner
        if declared is None:
            receive = limits.limited(receive, self.max_body_bytes)
        hot = self.hot
        # Hot routes are all POST; with FastAPI's native telemetry on, everything takes the
        # whole stack, whose middleware reports exceptions to it.
        if hot is not None and scope["method"] == "POST" and "fastapi.telemetry" not in scope:
            path = scope["path"]
            for route, handler, tail in self.hot_routes:
                if not path.endswith(tail):
                    continue
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["route"] = route
                    scope.setdefault("router", hot.router)
                    await _answer(hot, handler, scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _answer(hot: Hot, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """``handler``'s response, or the app's answer to what it raised (what FastAPI's
    ``request_response`` does, with no wrapped ``send``; the exit stacks FastAPI's own
    handler needs are opened by ``service.routes.hot`` when a hot handler falls back to it)."""
    request = Request(scope, receive, send)
    try:
        response = await handler(request)
    except Exception as exc:
        answer = hot.handler_for(exc)
        if answer is None:
            raise
        answered: Any = answer(request, exc)  # type: ignore[arg-type]
        response = await answered if inspect.isawaitable(answered) else answered
        exc.__traceback__ = None  # as Starlette: a reused exception would grow its traceback
    await response(scope, receive, send)


def _fixed_tail(path: str) -> str:
    """What a route path ends with after its last parameter ("" if it ends with one)."""
    return path.rpartition("}")[2]


async def refuse(scope: Scope, send: Send, err: ServiceError) -> None:
    """Answer ``err`` as problem+json and close the connection: the body was not read, and
    its unread bytes must not be taken for the next request."""
    body = problem_body(err.status, err.slug, err.title, err.detail, scope.get("path", ""))
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in err.headers.items()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _route_label(scope: Scope) -> str:
    """The matched path template; for a request answered before routing (a 413 or 401), the
    template it would have matched; else "unmatched". Never the raw path."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    app = scope.get("app")
    routes: Sequence[BaseRoute] = getattr(getattr(app, "router", None), "routes", ())
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", "unmatched"))
    return "unmatched"
