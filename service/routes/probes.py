"""Liveness, readiness and metrics at the root (no auth, cheap)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from bncore import kernels
from service.deps import BackendDep, RawStoreDep
from service.errors import StoreUnavailable
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.views import json_replay, to_response

router = APIRouter(tags=["probes"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> Response:
    return to_response(json_replay({"status": "ok"}))


@router.get("/readyz", summary="Readiness: the store answers; which array backend runs")
def readyz(store: RawStoreDep, backend: BackendDep) -> Response:
    try:
        store.ping()
    except StoreUnavailable as exc:
        down = {"status": "unavailable", "detail": exc.detail, "error": exc.detail}
        return to_response(json_replay(down, 503, {"Retry-After": "1"}))
    doc: dict[str, str | bool] = {
        "status": "ready",
        "backend": backend.name,
        "backend_reason": backend.reason,
        "cpu_kernels": kernels.available(),  # False: built without a C compiler (NumPy path)
    }
    return to_response(json_replay(doc))


@router.get("/metrics", summary="Prometheus metrics: process-wide totals over all workers")
def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
