"""The app factory: settings in, a FastAPI app out. Nothing reads the environment at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import bncore
from service import __version__, errors
from service.auth import ApiKeyAuth
from service.commit import Commits
from service.limits import BodyLimit
from service.malloc import keep_freed_memory
from service.metrics import Metrics, MetricsMiddleware
from service.routes import compute, history, merge, probes, sessions, stats, ui, v2
from service.settings import Settings
from service.stores import open_store, store_options

_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; `error` repeats `detail` for V2 clients",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "error": {"type": "string"},
    },
}


# Only enforced when BNAAS_API_KEYS is set; either scheme carries the key.
_SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The backend and the store open in the lifespan, once per process."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keep_freed_memory()
        backend = bncore.select(settings.device)
        store = open_store(settings.store, store_options(settings), backend.xp)
        app.state.backend = backend
        app.state.store = store
        app.state.commits = Commits(
            app.state.metrics,  # counts commit outcomes, retries and replays
            retries=settings.commit_retries,
            timeout_s=settings.store_timeout_s * 2,
        )
        try:
            yield
        finally:
            store.close()

    app = FastAPI(
        title="bnaas: Batch Normalization as a Service",
        version=__version__,
        lifespan=lifespan,
        description="Durable BatchNorm sessions: fit running statistics, transform, export.",
    )
    app.state.settings = settings
    app.state.metrics = Metrics(settings.metrics_drift_sessions)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Outside BodyLimit: a caller without a key learns nothing, not even the body limit.
    app.add_middleware(ApiKeyAuth, keys=settings.key_list())
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for module in (probes, sessions, compute, stats, history, merge, v2):
        app.include_router(module.router)
    if settings.ui_enabled:
        app.include_router(ui.router)
    _complete_openapi(app)
    return app


def _complete_openapi(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
            components["securitySchemes"] = _SECURITY
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from ``BNAAS_*`` variables."""
    return create_app(Settings())
