"""Compute routes: fit (train mode), transform (inference), backward, fold."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query
from starlette.responses import Response

import bncore
from service.codecs import (
    JSON,
    MULTI_TYPES,
    NPY,
    SAFETENSORS,
    TENSOR_TYPES,
    content_type,
    decode_safetensors,
    decode_tensor,
    dumps,
    encode_npy,
    encode_safetensors,
    json_array,
    json_dtype,
    negotiate,
    parse_json,
    tensor_json,
)
from service.deps import (
    BackendDep,
    BodyDep,
    IdempotencyDep,
    IfMatchDep,
    MetricsDep,
    SettingsDep,
    StoreDep,
)
from service.errors import MalformedBody
from service.routes.openapi import PROBLEMS, headers, multi_body, tensor_body, tensor_response
from service.stores.base import Replay, Session
from service.views import etag, json_replay, rendered, to_response

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["compute"])

Array = Any


def _tensor_replay(media: str, y: Array, headers: dict[str, str], extra: dict[str, Any]) -> Replay:
    if media == NPY:
        return Replay(200, NPY, encode_npy(bncore.to_host(y)), headers)
    return Replay(200, JSON, dumps({**tensor_json(bncore.to_host(y)), **extra}), headers)


def _b64(values: Any) -> str:
    """Host float64 values as base64 little-endian bytes (the npy answer's stats headers)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode()


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
    media = content_type(body.content_type, TENSOR_TYPES)
    answer = negotiate(body.accept, media, TENSOR_TYPES)
    session = store.get(session_id)
    x = decode_tensor(body.data, media, session.state.config.dtype)
    y = bncore.transform(session.state, backend.asarray(x))
    metrics.observe_op("transform", x.size)
    return to_response(_tensor_replay(answer, y, {"ETag": etag(session.version)}, {}))


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
    backend: BackendDep,
    settings: SettingsDep,
    if_match: IfMatchDep,
    idem: IdempotencyDep,
    metrics: MetricsDep,
    output: Annotated[bool, Query(description="return the normalized batch")] = True,
) -> Response:
    """Atomic: the batch is applied exactly once, or not at all (with Idempotency-Key, a
    retry returns the first answer)."""
    media = content_type(body.content_type, TENSOR_TYPES)
    answer = negotiate(body.accept, media, TENSOR_TYPES) if output else JSON
    # JSON numbers take the session's dtype (fixed at creation); .npy carries its own.
    dtype = store.get(session_id).state.config.dtype if media == JSON else "float32"
    x = decode_tensor(body.data, media, dtype)

    def change(session: Session) -> tuple[bncore.BNState, bncore.FitResult]:
        return bncore.fit(session.state, backend.asarray(x), output=output)

    def render(session: Session, result: bncore.FitResult) -> Replay:
        batch = result.batch
        stats: dict[str, Any] = {
            "mean": bncore.to_host(batch.mean),
            "var": bncore.to_host(batch.var),
            "count": int(bncore.to_host(batch.count).max()),
        }
        headers = {
            "ETag": etag(session.version),
            "BN-Num-Batches-Tracked": str(session.state.num_batches_tracked),
        }
        extra = {
            "batch": stats,
            "num_batches_tracked": session.state.num_batches_tracked,
            "version": session.version,
        }
        if result.output is None:
            return json_replay(extra, headers=headers)
        if (
            answer == NPY
            and session.state.config.num_features <= settings.stats_header_max_features
        ):
            headers["BN-Batch-Mean"] = _b64(stats["mean"])
            headers["BN-Batch-Var"] = _b64(stats["var"])
        return _tensor_replay(answer, result.output, headers, extra)

    out = rendered(
        store.update(session_id, change, if_match=if_match, idem=idem, render=render), render
    )
    metrics.observe_op("fit", x.size)
    return out


def _multi(body: bytes, media: str, names: tuple[str, ...], dtype: str) -> dict[str, Array]:
    """Named tensors from JSON members or a safetensors file; missing optional ones are absent."""
    if media == SAFETENSORS:
        tensors, _ = decode_safetensors(body)
        return {k: v for k, v in tensors.items() if k in names}
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise MalformedBody(f"JSON body must be an object with members {', '.join(names)}")
    dt = json_dtype(doc, dtype)
    shape = doc.get("shape")
    out = {}
    for name in names:
        if name in doc:
            out[name] = json_array(
                doc[name], name, shape if name in ("data", "grad_output") else None, dt
            )
    return out


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

    def run(session: Session) -> tuple[bncore.BNState | None, bncore.Gradients]:
        tensors = _multi(body.data, media, ("data", "grad_output"), session.state.config.dtype)
        x = backend.asarray(_require(tensors, "data"))
        g = backend.asarray(_require(tensors, "grad_output"))
        new, grads = bncore.backward(session.state, x, g, train=mode == "train", lr=lr)
        return (new if lr is not None else None), grads

    def render(session: Session, grads: bncore.Gradients) -> Replay:
        metrics.observe_op("backward", grads.grad_input.size)  # once per answer, not per try
        headers = {"ETag": etag(session.version)}
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
        doc["version"] = session.version
        return json_replay(doc, headers=headers)

    if lr is None:
        session = store.get(session_id)
        return to_response(render(session, run(session)[1]))
    return rendered(
        store.update(session_id, run, if_match=if_match, idem=idem, render=render), render
    )


@router.post(
    "/fold",
    summary="Fold into a preceding linear/conv layer: W' = W*scale, b' = (b-mean)*scale+beta",
    openapi_extra=multi_body(
        "The preceding layer's weight (C, ...) and optional bias (C,)",
        {"weight": "W, output channels first", "bias": "b (optional; zeros)"},
    ),
    responses={200: {"description": "folded weight and bias (JSON or safetensors)"}, **PROBLEMS},
)
def fold(
    session_id: str, body: BodyDep, store: StoreDep, backend: BackendDep, metrics: MetricsDep
) -> Response:
    media = content_type(body.content_type, MULTI_TYPES)
    answer = negotiate(body.accept, media, MULTI_TYPES)
    session = store.get(session_id)
    tensors = _multi(body.data, media, ("weight", "bias"), session.state.config.dtype)
    w = backend.asarray(_require(tensors, "weight"))
    b = tensors.get("bias")
    fw, fb = bncore.fold(session.state, w, backend.asarray(b) if b is not None else None)
    metrics.observe_op("fold", w.size)
    headers = {"ETag": etag(session.version)}
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
