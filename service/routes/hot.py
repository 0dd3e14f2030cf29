"""Hot routes: transform, fit and V2 infer without FastAPI's per-request machinery.

Measured (issue 10): for a small body the thread-pool hop of a sync ``def`` route (~0.3 ms in
and back, with ~9 context switches) and FastAPI's dependency resolution (~0.1-0.35 ms) cost
more than the work itself. ``HotRoute`` keeps the FastAPI declaration (so the operation, its
parameters and the OpenAPI table's bodies stay documented from the decorator) but answers with
a plain ``async def handler(request)`` registered with ``@hot(endpoint)``, which resolves what
it needs with the same helpers the dependencies use (``service.deps``: body limit and
decompression, owner, If-Match, Idempotency-Key) and raises the same errors.

Bodies up to ``BNAAS_INLINE_MAX_BYTES`` are decoded and computed on the event loop; larger ones
go to the thread pool, so one big request never stalls the others. A fit's commit waits for
SQLite's fsync (or Redis): it always runs in the thread pool, never on the loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.deps import Body
from service.settings import Settings

T = TypeVar("T")
Handler = Callable[[Request], Coroutine[Any, Any, Response]]
HotHandler = Callable[[Request, Handler], Awaitable[Response]]

# Off: every route answers through FastAPI's handler (tests and bench/http.py compare both).
ENABLED = True

_HOT: dict[Callable[..., Any], HotHandler] = {}


def hot(endpoint: Callable[..., Any]) -> Callable[[HotHandler], HotHandler]:
    """Register ``fn(request, slow)`` as the handler of the route declared by ``endpoint``;
    ``slow`` is FastAPI's own handler, for requests the fast one leaves to it (a query value
    that needs FastAPI's validation and 422)."""

    def register(fn: HotHandler) -> HotHandler:
        _HOT[endpoint] = fn
        return fn

    return register


class HotRoute(APIRoute):
    """An ``APIRoute`` answered by its ``@hot`` handler when one is registered."""

    def get_route_handler(self) -> Handler:
        fastapi_handler = super().get_route_handler()
        endpoint = self.endpoint

        async def slow(request: Request) -> Response:
            # Called by service.front, which opens none of the exit stacks FastAPI's handler
            # asserts are there (no hot route has a dependency with yield or a form): opened
            # here, only for a request that falls back to it.
            scope = request.scope
            if _STACKS[0] in scope:  # came down FastAPI's stack: they are open
                return await fastapi_handler(request)
            async with AsyncExitStack() as stack:
                for key in _STACKS:
                    scope[key] = stack
                return await fastapi_handler(request)

        async def handler(request: Request) -> Response:
            # Looked up per request: the @hot handler is registered after the decorator ran.
            fast = _HOT.get(endpoint) if ENABLED else None
            return await (slow(request) if fast is None else fast(request, slow))

        return handler


_STACKS = ("fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack")


# Below this, a tensor is copied after its header into one body (one write to the socket);
# above it, the copy costs more than a second message (a 4 MiB copy: ~0.5-1 ms).
SPLIT_BYTES = 64 * 1024


class Answer(Response):
    """A ``Response`` whose raw header list the handler wrote itself (lower-case names,
    ``content-length`` and ``content-type`` included): ``Response.__init__`` encodes and
    searches a header dict on every call (~3 us for a small answer).

    With a ``tail`` (a flat byte view of a tensor, ``content-length`` counting it), a large
    one is sent as a second body message instead of being copied after ``body``; ``body``
    then holds only the part before it."""

    def __init__(
        self,
        body: bytes,
        raw_headers: list[tuple[bytes, bytes]],
        status: int = 200,
        tail: memoryview | None = None,
    ) -> None:
        self.status_code = status
        self.background = None
        self.raw_headers = raw_headers
        self.tail = tail if tail is not None and len(tail) >= SPLIT_BYTES else None
        self.body = body if tail is None or self.tail is not None else body + tail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tail = self.tail
        if tail is None:
            await super().__call__(scope, receive, send)
            return
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        await send({"type": "http.response.body", "body": tail})


def fits_inline(settings: Settings, body: Body) -> bool:
    """Whether ``body`` is small enough to be decoded and computed on the event loop."""
    return len(body.data) <= settings.inline_max_bytes


async def run(small: bool, work: Callable[[], T]) -> T:
    """``work()`` on the loop when ``small``, else in the thread pool."""
    return work() if small else await run_in_threadpool(work)


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def query_bool(request: Request, name: str, default: bool) -> bool | None:
    """A boolean query parameter as FastAPI reads it; None when FastAPI would answer 422."""
    if not request.scope["query_string"]:
        return default  # the usual case: no query to parse
    value = request.query_params.get(name)
    if value is None:
        return default
    low = value.lower()
    return True if low in _TRUE else False if low in _FALSE else None


def install(app: FastAPI, routers: Iterable[APIRouter]) -> list[tuple[Route, Handler]]:
    """Put the hot routes at the head of ``app``'s route table; returns them with their
    handlers (``service.front`` calls those itself, without the router).

    FastAPI matches a request against the included routers one route after another, with
    per-route bookkeeping (measured: ~40% of a small V2 request's in-process time went to
    matching). A plain Starlette ``Route`` per hot path, first in the table, matches with one
    regex and hands the request to the same ASGI app as the documented ``HotRoute`` (which
    stays where it is, for OpenAPI and for every other method on the path)."""
    if not ENABLED:
        return []
    front: list[tuple[Route, Handler]] = []
    for router in routers:
        for route in router.routes:
            if isinstance(route, HotRoute) and route.endpoint in _HOT:
                shortcut = Route(route.path, _unused, methods=list(route.methods or ()))
                shortcut.app = route.app  # the HotRoute's own handler, error handling included
                front.append((shortcut, route.get_route_handler()))
    app.router.routes[:0] = [shortcut for shortcut, _ in front]
    return front


async def _unused(request: Request) -> Response:  # replaced by the HotRoute's app
    raise AssertionError("unreachable")
