"""Open Inference Protocol (KServe V2): every session is a model named by its id."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import bncore
from bncore import Backend
from service import __version__
from service.commit import Commits, FitOutcome
from service.deps import (
    BackendDep,
    Body,
    BodyDep,
    CommitsDep,
    IdempotencyDep,
    MetricsDep,
    RawStoreDep,
    StoreDep,
    get_idempotency,
    get_store,
    headers_of,
    read_body,
)
from service.errors import ServiceError, StoreUnavailable
from service.metrics import Metrics
from service.routes.compute import observe_fit
from service.routes.hot import (
    Answer,
    Handler,
    HotRoute,
    fits_inline,
    hot,
    run,
)
from service.routes.openapi import headers
from service.settings import Settings
from service.stores.base import Idempotency, Replay, Session, Store, loop_safe
from service.v2codec import (
    INPUT,
    OCTET,
    OUTPUT,
    InferRequest,
    datatype,
    decode_infer,
    encode_infer,
    encode_infer_parts,
)
from service.views import json_replay, to_response

router = APIRouter(prefix="/v2", tags=["v2"], route_class=HotRoute)


class UnknownVersion(ServiceError):
    status, slug, title = 404, "model-version-not-found", "Model version not found"


def _check_version(session_id: str, version: str | None) -> None:
    if version is not None and version != "1":
        raise UnknownVersion(f"model {session_id!r} has no version {version!r} (only '1')")


@router.get("", summary="Server metadata")
def server_metadata() -> Response:
    doc = {"name": "bnaas", "version": __version__, "extensions": ["binary_tensor_data"]}
    return to_response(json_replay(doc))


@router.get("/health/live", summary="Server liveness")
def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="Server readiness (the store answers)")
def ready(store: RawStoreDep) -> Response:
    try:
        store.ping()
    except StoreUnavailable as exc:
        return to_response(json_replay({"error": exc.detail}, 503))
    return Response(status_code=200)


def _metadata(session: Session) -> dict[str, Any]:
    cfg = session.state.config
    # Any rank from 2 to 5 is accepted; [-1, C] is the common (N, C) / channels-last form.
    tensor = {"datatype": datatype(np.dtype(cfg.dtype)), "shape": [-1, cfg.num_features]}
    return {
        "name": session.id,
        "versions": ["1"],
        "platform": "bnaas_batchnorm",
        "inputs": [{"name": INPUT, **tensor}],
        "outputs": [{"name": OUTPUT, **tensor}],
    }


@router.get("/models/{session_id}", summary="Model (session) metadata")
@router.get("/models/{session_id}/versions/{version}", summary="Model metadata, versioned")
def model_metadata(session_id: str, store: StoreDep, version: str | None = None) -> Response:
    _check_version(session_id, version)
    return to_response(json_replay(_metadata(store.read(session_id))))


@router.get("/models/{session_id}/ready", summary="Model (session) readiness")
@router.get("/models/{session_id}/versions/{version}/ready", summary="Model readiness, versioned")
def model_ready(session_id: str, store: StoreDep, version: str | None = None) -> Response:
    _check_version(session_id, version)
    store.read(session_id)
    return Response(status_code=200)


_INFER_DOC: dict[str, Any] = {
    **headers("Idempotency-Key"),
    "requestBody": {
        "required": True,
        "description": "A V2 inference request: JSON, or JSON followed by raw tensor bytes whose "
        "JSON length is given in Inference-Header-Content-Length. parameters.mode is "
        "'transform' (default) or 'fit'.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@router.post(
    "/models/{session_id}/infer",
    summary="Infer: transform (default) or fit",
    openapi_extra=_INFER_DOC,
)
@router.post(
    "/models/{session_id}/versions/{version}/infer",
    summary="Infer, versioned",
    openapi_extra=_INFER_DOC,
)
def infer(
    session_id: str,
    request: Request,
    body: BodyDep,
    store: StoreDep,
    commits: CommitsDep,
    backend: BackendDep,
    idem: IdempotencyDep,
    metrics: MetricsDep,
    version: str | None = None,
) -> Response:
    _check_version(session_id, version)
    decoded = _decode(session_id, request, body, store)
    if decoded[1].mode == "transform":
        return _transform(session_id, decoded, backend, metrics)
    return _fit(session_id, decoded, store, commits, backend, idem, metrics)


def _decode(
    session_id: str, request: Request, body: Body, store: Store
) -> tuple[Session, InferRequest]:
    length = request.headers.get("inference-header-content-length")
    return _decode_with(session_id, length, body, store)


def _decode_with(
    session_id: str, header_length: str | None, body: Body, store: Store
) -> tuple[Session, InferRequest]:
    session = store.read(session_id)
    return session, decode_infer(body.data, header_length, session.state.config.dtype)


def _transform(
    session_id: str, decoded: tuple[Session, InferRequest], backend: Backend, metrics: Metrics
) -> Response:
    session, req = decoded
    y = bncore.transform(session.state, backend.asarray(req.x))
    metrics.observe_op("transform", req.x.size)
    return _answer(session_id, req, y, {"mode": "transform"})


def _fit(
    session_id: str,
    decoded: tuple[Session, InferRequest],
    store: Store,
    commits: Commits,
    backend: Backend,
    idem: Idempotency | None,
    metrics: Metrics,
) -> Response:
    session, req = decoded
    out = commits.fit(store, session, backend.asarray(req.x), idem=idem)
    return _fit_answer(session_id, session, req, out, metrics)


def _fit_answer(
    session_id: str, session: Session, req: InferRequest, out: FitOutcome, metrics: Metrics
) -> Response:
    observe_fit(metrics, session, out, req.x.size)
    assert out.output is not None
    params = {"mode": "fit", "num_batches_tracked": out.record.num_batches_tracked}
    data, headers, media = encode_infer(session_id, req, bncore.to_host(out.output), params)
    return to_response(Replay(200, media, data, headers), replayed=out.replayed)


@hot(infer)
async def infer_hot(request: Request, slow: Handler) -> Response:
    """``infer`` on the event loop for a small body (in the thread pool for a large one, with
    one hop for decode and transform); a small fit awaits its commit on the loop when the
    store is ``loop_safe``."""
    params = request.path_params
    sid: str = params["session_id"]
    state = request.app.state  # each attribute read once: State.__getattr__ is Python code
    settings: Settings = state.settings
    heads = headers_of(request)
    body = await read_body(request, heads, settings)
    store = await get_store(request)
    idem = await get_idempotency(request) if b"idempotency-key" in heads else None
    _check_version(sid, params.get("version"))
    backend: Backend = state.backend
    metrics: Metrics = state.metrics
    length = heads.get(b"inference-header-content-length")
    small = fits_inline(settings, body)

    def work() -> Response | tuple[Session, InferRequest]:
        decoded = _decode_with(sid, length, body, store)
        if decoded[1].mode == "transform":
            return _transform(sid, decoded, backend, metrics)
        return decoded  # a fit: committed below

    done = await run(small, work)
    if isinstance(done, Response):
        return done
    commits: Commits = state.commits
    if small and loop_safe(store):
        session, req = done
        out = await commits.fit_async(store, session, backend.asarray(req.x), idem=idem)
        return _fit_answer(sid, session, req, out, metrics)
    return await run_in_threadpool(_fit, sid, done, store, commits, backend, idem, metrics)


_OCTET_RAW = (b"content-type", OCTET.encode())
_JSON_RAW = (b"content-type", b"application/json")


def _answer(model: str, req: InferRequest, y: Any, params: dict[str, Any]) -> Response:
    head, tail, headers, media = encode_infer_parts(model, req, bncore.to_host(y), params)
    size = len(head) + (0 if tail is None else len(tail))
    length = (b"content-length", b"%d" % size)
    if media == OCTET:
        json_length = headers["Inference-Header-Content-Length"].encode()
        raw = [(b"inference-header-content-length", json_length), length, _OCTET_RAW]
        return Answer(head, raw, tail=tail)  # a large tensor is sent from y itself
    return Answer(head, [length, _JSON_RAW])
