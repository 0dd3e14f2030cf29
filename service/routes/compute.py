"""Compute routes: fit (train mode), transform (inference), backward, fold."""

from __future__ import annotations

import binascii
import sys
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

import bncore
from service.codecs import (
    JSON,
    MULTI_TYPES,
    NPY,
    SAFETENSORS,
    TENSOR_TYPES,
    content_type,
    decode_named,
    decode_named_json,
    decode_tensor,
    dumps,
    encode_safetensors,
    negotiate,
    npy_parts,
    parse_json,
    tensor_json,
)
from service.commit import Commits, FitOutcome
from service.deps import (
    BackendDep,
    Body,
    BodyDep,
    CommitsDep,
    IdempotencyDep,
    IfMatchDep,
    MetricsDep,
    SettingsDep,
    StoreDep,
    get_idempotency,
    get_store,
    headers_of,
    parse_if_match,
    read_body,
)
from service.errors import MalformedBody
from service.metrics import Metrics
from service.routes.hot import (
    Answer,
    Handler,
    HotRoute,
    fits_inline,
    hot,
    query_bool,
    run,
)
from service.routes.openapi import PROBLEMS, headers, multi_body, tensor_body, tensor_response
from service.settings import Settings
from service.stores.base import Idempotency, IfMatch, Replay, Session, Store, loop_safe
from service.views import etag, json_replay, to_response

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["compute"], route_class=HotRoute)

Array = Any


def _b64(values: Any) -> bytes:
    """Host float64 values as base64 little-endian bytes (the npy answer's stats headers)."""
    if not (_LITTLE and type(values) is np.ndarray and values.dtype is _F64):
        values = np.ascontiguousarray(values, dtype="<f8")
    elif not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    return binascii.b2a_base64(values, newline=False)  # base64.b64encode, one call less


_F64 = np.dtype(np.float64)
_LITTLE = sys.byteorder == "little"


@router.post(
    "/transform",
    summary="Normalize a batch with the running statistics (inference mode)",
    openapi_extra=tensor_body("A batch (N, C, ...) or channels-last, JSON or .npy"),
    responses=tensor_response(
        "The normalized batch, same shape and dtype", {"ETag": "session version"}
    ),
)
def transform(
    session_id: str, body: BodyDep, store: StoreDep, backend: BackendDep, metrics: MetricsDep
) -> Response:
    """Inference mode: never changes the session."""
    return _transform(session_id, body, store, backend, metrics)


def _transform(
    session_id: str, body: Body, store: Store, backend: bncore.Backend, metrics: Metrics
) -> Response:
    media = content_type(body.content_type, TENSOR_TYPES)
    answer = negotiate(body.accept, media, TENSOR_TYPES)
    session = store.read(session_id)
    x = decode_tensor(body.data, media, session.state.config.dtype)
    y = bncore.to_host(bncore.transform(session.state, backend.asarray(x)))
    metrics.observe_op("transform", x.size)
    if answer == NPY:
        head, tail = npy_parts(y)  # the data goes out from y itself (service.routes.hot)
    else:
        head, tail = dumps(tensor_json(y)), None
    size = len(head) + (0 if tail is None else len(tail))
    headers = [
        (b"etag", etag(session.version).encode()),
        (b"vary", b"Accept"),
        (b"content-length", b"%d" % size),
        (b"content-type", _RAW_TYPES[answer]),
    ]
    return Answer(head, headers, tail=tail)


_RAW_TYPES = {NPY: NPY.encode(), JSON: JSON.encode()}


@hot(transform)
async def transform_hot(request: Request, slow: Handler) -> Response:
    """``transform`` on the event loop for a small body, in the thread pool for a large one."""
    state = request.app.state
    settings: Settings = state.settings
    body = await read_body(request, headers_of(request), settings)
    store = await get_store(request)
    backend, metrics = state.backend, state.metrics
    sid: str = request.path_params["session_id"]
    return await run(
        fits_inline(settings, body), lambda: _transform(sid, body, store, backend, metrics)
    )


@router.post(
    "/fit",
    summary="Train-mode forward: normalize with batch statistics and update the running ones",
    openapi_extra={
        **tensor_body("A batch with more than one value per channel, JSON or .npy"),
        **headers("If-Match", "Idempotency-Key"),
    },
    responses=tensor_response(
        "The normalized batch (JSON adds `batch` statistics and `num_batches_tracked`); with "
        "`?output=false` only the statistics, as JSON. In .npy answers the batch mean and "
        "biased variance travel base64-encoded little-endian float64 in `BN-Batch-Mean` and "
        "`BN-Batch-Var` (for C up to BNAAS_STATS_HEADER_MAX_FEATURES).",
        {
            "ETag": "session version after the fit",
            "BN-Num-Batches-Tracked": "num_batches_tracked after the fit",
            "BN-Batch-Mean": "base64 <f8 batch mean per channel",
            "BN-Batch-Var": "base64 <f8 biased batch variance per channel",
        },
    ),
)
def fit(
    session_id: str,
    body: BodyDep,
    store: StoreDep,
    commits: CommitsDep,
    backend: BackendDep,
    settings: SettingsDep,
    if_match: IfMatchDep,
    idem: IdempotencyDep,
    metrics: MetricsDep,
    output: Annotated[bool, Query(description="return the normalized batch")] = True,
) -> Response:
    """Atomic: the batch is applied exactly once, or not at all (with Idempotency-Key, a
    retry returns the first answer)."""
    fit = _Fit(session_id, body, store, settings, output)
    return fit.commit(fit.decode(backend, commits), commits, if_match, idem, metrics)


class _Fit:
    """A fit in two steps: ``decode`` (no I/O beyond a cached read: may run on the event loop)
    and ``commit`` (waits for the store's durable commit: never on the event loop)."""

    def __init__(
        self, session_id: str, body: Body, store: Store, settings: Settings, output: bool
    ) -> None:
        self.media = content_type(body.content_type, TENSOR_TYPES)
        self.answer = negotiate(body.accept, self.media, TENSOR_TYPES) if output else JSON
        self.body, self.store, self.output = body, store, output
        self.session_id, self.max_header = session_id, settings.stats_header_max_features

    def decode(self, backend: bncore.Backend, commits: Commits) -> tuple[Session, Array]:
        session = commits.read(self.store, self.session_id)
        # Every body is converted to the session's dtype (fixed at creation; service/dtypes.py).
        x = decode_tensor(self.body.data, self.media, session.state.config.dtype)
        return session, backend.asarray(x)

    def commit(
        self,
        decoded: tuple[Session, Array],
        commits: Commits,
        if_match: IfMatch,
        idem: Idempotency | None,
        metrics: Metrics,
    ) -> Response:
        session, x = decoded
        out = commits.fit(self.store, session, x, if_match=if_match, idem=idem, output=self.output)
        return self.answer_for(session, x, out, metrics)

    def answer_for(self, session: Session, x: Array, out: FitOutcome, metrics: Metrics) -> Response:
        observe_fit(metrics, session, out, x.size)
        if out.output is not None and self.answer == NPY:
            return _fit_npy(out, self.max_header)
        return to_response(_fit_json(out), replayed=out.replayed)


@hot(fit)
async def fit_hot(request: Request, slow: Handler) -> Response:
    """``fit`` with the decode on the event loop for a small body (in the thread pool for a
    large one). The commit waits for fsync (or Redis): on the loop, as an awaited group
    commit, for a small body and a ``loop_safe`` store; else in the thread pool."""
    output = query_bool(request, "output", True)
    if output is None:
        return await slow(request)  # FastAPI's 422 for a value it cannot read
    state = request.app.state
    settings: Settings = state.settings
    heads = headers_of(request)
    body = await read_body(request, heads, settings)
    if_match = parse_if_match(heads.get(b"if-match"))
    idem = await get_idempotency(request) if b"idempotency-key" in heads else None
    store = await get_store(request)
    fit = _Fit(request.path_params["session_id"], body, store, settings, output)
    commits: Commits = state.commits
    metrics: Metrics = state.metrics
    backend: bncore.Backend = state.backend
    if fits_inline(settings, body):
        decoded = fit.decode(backend, commits)
        if loop_safe(store):  # waiting for the commit yields to the loop: no thread hop
            session, x = decoded
            out = await commits.fit_async(
                store, session, x, if_match=if_match, idem=idem, output=output
            )
            return fit.answer_for(session, x, out, metrics)
        return await run_in_threadpool(fit.commit, decoded, commits, if_match, idem, metrics)

    def work() -> Response:
        return fit.commit(fit.decode(backend, commits), commits, if_match, idem, metrics)

    return await run_in_threadpool(work)


def observe_fit(metrics: Metrics, session: Session, out: FitOutcome, values: int) -> None:
    """Count a fit that was applied now (a replay applies nothing), with its drift."""
    if not out.replayed:
        rec, cfg = out.record, session.state.config
        metrics.observe_fit(session.id, values, rec.summary, rec.flags, cfg.drift_metrics)


def _fit_json(out: FitOutcome) -> Replay:
    """The fit's JSON answer (the batch, or with ``?output=false`` only the statistics), from
    its O(C) record and output alone (a replay renders the same)."""
    rec = out.record
    headers = {
        "ETag": etag(rec.version),
        "BN-Num-Batches-Tracked": str(rec.num_batches_tracked),
        "Vary": "Accept",
    }
    extra = {
        "batch": {"mean": rec.batch.mean, "var": rec.var, "count": rec.count},
        "num_batches_tracked": rec.num_batches_tracked,
        "version": rec.version,
        "drift": rec.drift_json(),
    }
    if out.output is None:
        return json_replay(extra, headers=headers)
    return Replay(200, JSON, dumps({**tensor_json(bncore.to_host(out.output)), **extra}), headers)


def _fit_npy(out: FitOutcome, max_header_features: int) -> Answer:
    """The fit's .npy answer (with its output): the headers of ``_fit_json`` (the same names
    and order as a ``Response`` writes them), the batch statistics in ``BN-Batch-Mean`` and
    ``BN-Batch-Var`` instead of JSON, as ``Answer``'s raw header list (no header dict to
    encode per fit)."""
    rec = out.record
    y = out.output
    head, tail = npy_parts(y if type(y) is np.ndarray else bncore.to_host(y))
    headers = [
        (b"etag", b'"%d"' % rec.version),
        (b"bn-num-batches-tracked", b"%d" % rec.num_batches_tracked),
        (b"vary", b"Accept"),
    ]
    if rec.batch.mean.size <= max_header_features:
        headers.append((b"bn-batch-mean", _b64(rec.batch.mean)))
        headers.append((b"bn-batch-var", _b64(rec.var)))
    if out.replayed:
        headers.append((b"idempotent-replayed", b"true"))
    headers.append((b"content-length", b"%d" % (len(head) + len(tail))))
    headers.append((b"content-type", _RAW_TYPES[NPY]))
    return Answer(head, headers, tail=tail)


def _require(tensors: dict[str, Array], name: str) -> Array:
    if name not in tensors:
        raise MalformedBody(f"missing tensor {name!r}")
    return tensors[name]


@router.post(
    "/backward",
    summary="Gradients dL/dx, dL/dweight, dL/dbias; with lr an SGD step on weight and bias",
    openapi_extra={
        **multi_body(
            "The forward input and dL/dy of the same shape",
            {"data": "forward input x", "grad_output": "dL/dy, same shape as data"},
        ),
        **headers("If-Match", "Idempotency-Key"),
    },
    responses={
        200: {"description": "grad_input, grad_weight, grad_bias (JSON or safetensors)"},
        **PROBLEMS,
    },
)
def backward(
    session_id: str,
    body: BodyDep,
    store: StoreDep,
    commits: CommitsDep,
    backend: BackendDep,
    if_match: IfMatchDep,
    idem: IdempotencyDep,
    metrics: MetricsDep,
    mode: Annotated[
        Literal["train", "eval"], Query(description="train: through batch statistics")
    ] = "train",
    lr: Annotated[float | None, Query(gt=0, description="apply weight -= lr * grad_weight")] = None,
) -> Response:
    media = content_type(body.content_type, MULTI_TYPES)
    answer = negotiate(body.accept, media, MULTI_TYPES)
    session = store.read(session_id)
    tensors = decode_named(body.data, media, ("data", "grad_output"), session.state.config.dtype)
    x = backend.asarray(_require(tensors, "data"))
    g = backend.asarray(_require(tensors, "grad_output"))
    train = mode == "train"
    if lr is None:
        grads = bncore.backward(session.state, x, g, train=train)[1]
        metrics.observe_op("backward", x.size)
        return to_response(_gradients(answer, grads, session.version))
    found: list[bncore.Gradients] = []

    def step(state: bncore.BNState) -> bncore.BNState:
        # The gradients depend on the weight (and in eval mode the running statistics) of
        # the state the step is applied to: computed here, under the session's commit slot.
        new, grads = bncore.backward(state, x, g, train=train, lr=lr)
        found[:] = [grads]
        return new

    out = commits.change(store, session, step, if_match=if_match, idem=idem)
    if out.replayed:  # recomputed from the state the first request was applied to
        found[:] = [bncore.backward(out.before, x, g, train=train)[1]]
    else:
        metrics.observe_op("backward", x.size)
    return to_response(_gradients(answer, found[0], out.version), replayed=out.replayed)


def _gradients(answer: str, grads: bncore.Gradients, version: int) -> Replay:
    headers = {"ETag": etag(version), "Vary": "Accept"}
    named = {
        "grad_input": grads.grad_input,
        "grad_weight": grads.grad_weight,
        "grad_bias": grads.grad_bias,
    }
    present = {k: bncore.to_host(v) for k, v in named.items() if v is not None}
    if answer == SAFETENSORS:
        return Replay(200, SAFETENSORS, encode_safetensors(present), headers)
    doc: dict[str, Any] = {k: v for k, v in present.items() if k != "grad_input"}
    doc["grad_input"] = tensor_json(present["grad_input"])
    doc["version"] = version
    return json_replay(doc, headers=headers)


@router.post(
    "/fold",
    summary="Fold into a preceding linear/conv layer: W' = W*scale, b' = (b-mean)*scale+beta",
    openapi_extra=multi_body(
        "The preceding layer's weight and optional bias (C,). Linear (out, in) and Conv "
        "(out, in/groups, ...) weights have the output channels on axis 0 (the default); "
        "ConvTranspose weights are (in, out/groups, ...): send `transposed: true` (a JSON "
        "member or the query) and `groups` when > 1. Integer inputs give the session's dtype.",
        {"weight": "W", "bias": "b (optional; zeros)"},
    ),
    responses={200: {"description": "folded weight and bias (JSON or safetensors)"}, **PROBLEMS},
)
def fold(
    session_id: str,
    body: BodyDep,
    store: StoreDep,
    backend: BackendDep,
    metrics: MetricsDep,
    transposed: Annotated[
        bool, Query(description="ConvTranspose weight (in, out/groups, ...)")
    ] = False,
    groups: Annotated[int, Query(ge=1, le=1 << 20, description="ConvTranspose groups")] = 1,
) -> Response:
    media = content_type(body.content_type, MULTI_TYPES)
    answer = negotiate(body.accept, media, MULTI_TYPES)
    session = store.read(session_id)
    names, dtype = ("weight", "bias"), session.state.config.dtype
    if media == JSON:  # parsed once: the tensors and the transposed/groups members
        doc = parse_json(body.data)
        tensors = decode_named_json(body.data, doc, names, dtype)
        transposed = _flag(doc, "transposed", transposed)
        groups = _int(doc, "groups", groups)
    else:
        tensors = decode_named(body.data, media, names, dtype)
    w = backend.asarray(_require(tensors, "weight"))
    b = tensors.get("bias")
    fw, fb = bncore.fold(
        session.state,
        w,
        backend.asarray(b) if b is not None else None,
        transposed=transposed,
        groups=groups,
    )
    metrics.observe_op("fold", w.size)
    headers = {"ETag": etag(session.version), "Vary": "Accept"}
    if answer == SAFETENSORS:
        return to_response(
            Replay(
                200,
                SAFETENSORS,
                encode_safetensors({"weight": bncore.to_host(fw), "bias": bncore.to_host(fb)}),
                headers,
            )
        )
    return to_response(
        json_replay(
            {"weight": tensor_json(bncore.to_host(fw)), "bias": bncore.to_host(fb)}, headers=headers
        )
    )


def _flag(doc: dict[str, Any], name: str, default: bool) -> bool:
    value = doc.get(name, default)
    if not isinstance(value, bool):
        raise MalformedBody(f"{name} must be a boolean, got {value!r}")
    return value


def _int(doc: dict[str, Any], name: str, default: int) -> int:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise MalformedBody(f"{name} must be an integer in [1, 2**20], got {value!r}")
    return value
