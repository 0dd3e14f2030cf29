"""The app factory: settings in, a FastAPI app out. Nothing reads the environment at import."""

from __future__ import annotations

import gc
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, ExceptionHandler

import bncore
from bncore import cuda_kernels
from service import __version__, errors
from service.commit import Commits
from service.front import Front, Handler, Hot
from service.malloc import keep_freed_memory
from service.metrics import Metrics
from service.routes import (
    compute,
    docs,
    history,
    hot,
    merge,
    openapi_schema,
    probes,
    sessions,
    stats,
    ui,
    v2,
)
from service.settings import Settings
from service.stores import open_store, store_options


class Service(FastAPI):
    """FastAPI with ``Front`` (service/front.py) in front of its whole middleware stack."""

    front: Callable[[ASGIApp], Front] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The backend and the store open in the lifespan, once per process."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keep_freed_memory()
        backend = bncore.select(settings.device)
        cuda_kernels.enable(settings.cuda_kernels)
        store = open_store(settings.store, store_options(settings), backend.xp)
        app.state.backend = backend
        app.state.store = store
        app.state.commits = Commits(
            app.state.metrics,  # counts commit outcomes, retries and replays
            retries=settings.commit_retries,
            timeout_s=settings.store_timeout_s * 2,
        )
        # What exists now (modules, routes, schemas, the store) lives as long as the process:
        # out of the collector's sight, a full collection no longer scans it. Measured on a
        # hot session: 20-25 ms pauses every few seconds, p99 30 -> 10 ms.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            store.close()

    app = Service(
        title="bnaas: Batch Normalization as a Service",
        version=__version__,
        lifespan=lifespan,
        description="Durable BatchNorm sessions: fit running statistics, transform, export.",
        docs_url=None,  # served by routes/docs.py from local assets, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics(settings.metrics_drift_sessions)
    errors.install(app)
    for module in (probes, sessions, compute, stats, history, merge, v2, docs):
        app.include_router(module.router)
    if settings.ui_enabled:
        app.include_router(ui.router)
    hot_routes = hot.install(app, (compute.router, v2.router))  # see service/routes/hot.py
    _complete_openapi(app)
    _allow_every_method(app)
    app.front = lambda stack: _front(app, stack, hot_routes)
    return app


def _front(app: FastAPI, stack: ASGIApp, hot_routes: Sequence[tuple[Route, Handler]]) -> Front:
    """``Front`` over FastAPI's ``stack``, with the handlers FastAPI gives that stack: the
    ``Exception`` one for unexpected errors, the others for the hot routes."""
    settings: Settings = app.state.settings
    by_type: dict[Any, ExceptionHandler] = {}
    by_status: dict[int, ExceptionHandler] = {}
    for key, handler in app.exception_handlers.items():
        if isinstance(key, int):
            if key != 500:
                by_status[key] = handler
        elif key is not Exception:
            by_type[key] = handler
    return Front(
        stack,
        app.state.metrics,
        settings.key_list(),
        settings.max_body_bytes,
        on_error=app.exception_handlers.get(Exception),
        hot=Hot(hot_routes, (by_type, by_status), app.router) if hot_routes else None,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allow_every_method(app: FastAPI) -> None:
    """Starlette's 405 names the methods of the first route whose path matches; a path that
    several routes serve (GET and POST /v1/sessions) must list them all in ``Allow``."""
    answer = app.exception_handlers.get(HTTPException)
    if answer is None:
        return

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        response = answer(request, exc)
        if inspect.isawaitable(response):
            response = await response
        allowed = [
            method
            for method in _METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] == Match.FULL
                for route in app.router.routes
            )
        ]
        response.headers["Allow"] = ", ".join(allowed)
        return response

    app.add_exception_handler(405, method_not_allowed)


def _complete_openapi(app: FastAPI) -> None:
    """Routes answer raw ``Response`` objects, so FastAPI knows their parameters but not their
    bodies: ``routes/openapi.py`` documents those (and security, from the settings)."""
    build = app.openapi
    keyed = bool(app.state.settings.key_list())

    def complete() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_schema.complete(build(), keyed)
        return app.openapi_schema

    app.openapi = complete  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from ``BNAAS_*`` variables."""
    return create_app(Settings())
