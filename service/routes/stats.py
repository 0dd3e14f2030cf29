"""Statistics export and import: JSON (PyTorch names), safetensors (a BatchNorm state_dict),
and the Keras / ONNX conventions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

import bncore
from service.codecs import (
    JSON,
    SAFETENSORS,
    content_type,
    decode_safetensors,
    encode_safetensors,
    negotiate,
    parse_json,
)
from service.deps import BodyDep, CommitsDep, IfMatchDep, StoreDep
from service.errors import MalformedBody
from service.routes.history import MAX_LIMIT, history_entries
from service.routes.openapi import PROBLEMS, headers
from service.views import etag, json_replay, to_response

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["stats"])

Format = Literal["json", "safetensors", "keras", "onnx"]
_EXPORT_TYPES = (JSON, SAFETENSORS)


class Population(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: list[float]
    mean: list[float | None]
    var: list[float | None]


class StatsImport(BaseModel):
    """What ``GET /stats`` produces; every member is optional (absent ones are kept)."""

    model_config = ConfigDict(extra="forbid")
    weight: list[float] | None = None
    bias: list[float] | None = None
    running_mean: list[float] | None = None
    running_var: list[float] | None = None
    num_batches_tracked: int | None = Field(None, ge=0)
    eps: float | None = Field(None, gt=0, allow_inf_nan=False)
    momentum: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    population: Population | None = None


def _population(state: bncore.BNState) -> dict[str, Any]:
    pop = state.population
    return {"count": pop.count, "mean": pop.mean, "var": pop.var}


def export_json(state: bncore.BNState) -> dict[str, Any]:
    """PyTorch state_dict names plus eps, momentum and the exact population moments."""
    host = state.to_host()
    doc: dict[str, Any] = dict(host.buffers())
    doc["num_batches_tracked"] = host.num_batches_tracked
    doc["eps"] = host.config.eps
    doc["momentum"] = host.config.momentum
    doc["population"] = _population(host)
    return doc


def export_safetensors(state: bncore.BNState) -> bytes:
    """Tensors named exactly as a ``torch.nn.BatchNorm*d`` state_dict (strict loading works);
    eps, momentum and population go in ``__metadata__`` as JSON strings."""
    host = state.to_host()
    tensors: dict[str, Any] = dict(host.buffers())
    if host.config.track_running_stats:
        tensors["num_batches_tracked"] = np.array(host.num_batches_tracked, dtype=np.int64)
    pop = {k: np.asarray(v).tolist() for k, v in _population(host).items()}
    meta = {
        "format": "pt",
        "eps": orjson.dumps(host.config.eps).decode(),
        "momentum": orjson.dumps(host.config.momentum).decode(),
        "population": orjson.dumps(pop, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
    }
    return encode_safetensors(tensors, meta)


@router.get(
    "/stats",
    summary="Export the statistics (JSON, safetensors state_dict, Keras or ONNX names)",
    responses={
        200: {
            "description": "JSON by default; safetensors by ?format= or Accept",
            "content": {"application/json": {}, "application/x-safetensors": {}},
        },
        **PROBLEMS,
    },
)
def get_stats(
    session_id: str,
    request: Request,
    store: StoreDep,
    format: Annotated[Format | None, Query(description="overrides Accept")] = None,
    history: Annotated[
        int, Query(ge=0, le=MAX_LIMIT, description="JSON: add the newest N history entries")
    ] = 0,
) -> Response:
    session = store.read(session_id)
    fmt = format or (
        "safetensors"
        if negotiate(request.headers.get("accept"), JSON, _EXPORT_TYPES) == SAFETENSORS
        else "json"
    )
    headers = {"ETag": etag(session.version), "Vary": "Accept"}
    if fmt == "safetensors":
        return Response(export_safetensors(session.state), headers=headers, media_type=SAFETENSORS)
    if fmt in ("keras", "onnx"):
        return to_response(json_replay(bncore.export_state(session.state, fmt), headers=headers))
    doc = export_json(session.state)
    if history:
        doc["history"] = history_entries(store, session_id, history)[0]
    return to_response(json_replay(doc, headers=headers))


def _validated(doc: Any) -> dict[str, Any]:
    try:
        return StatsImport.model_validate(doc).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _from_safetensors(body: bytes) -> dict[str, Any]:
    tensors, meta = decode_safetensors(body)
    values: dict[str, Any] = {}
    for name, arr in tensors.items():
        if name == "num_batches_tracked":
            values[name] = int(arr)
        else:
            values[name] = arr.tolist()
    try:
        for key in ("eps", "momentum", "population"):
            if key in meta:
                values[key] = orjson.loads(meta[key])
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"safetensors metadata is not JSON: {exc}") from None
    return _validated(values)


def apply_import(state: bncore.BNState, values: dict[str, Any]) -> bncore.BNState:
    """A new state with the given members replaced and everything else kept."""
    config = state.config
    if "eps" in values or "momentum" in values:
        changed: dict[str, Any] = {k: values[k] for k in ("eps", "momentum") if k in values}
        config = bncore.BNConfig(**{**config.to_dict(), **changed})
    xp = bncore.namespace(state.population.mean)
    pop = state.population
    if "population" in values:
        p = values["population"]
        pop = bncore.Moments.from_stats(p["count"], p["mean"], p["var"], xp)
        if pop.count.shape != (config.num_features,):
            raise bncore.ShapeError(f"population must have {config.num_features} values per member")
    buffers = {k: values.get(k, v) for k, v in state.buffers().items()}
    for k in ("weight", "bias", "running_mean", "running_var"):
        if k in values and k not in buffers:
            buffers[k] = values[k]  # initial_state names the configuration conflict
    return bncore.initial_state(
        config,
        **buffers,
        num_batches_tracked=values.get("num_batches_tracked", state.num_batches_tracked),
        population=pop,
        xp=xp,
    )


@router.put(
    "/stats",
    summary="Import (restore) statistics: what GET /stats exports, in JSON or safetensors",
    openapi_extra={
        **headers("If-Match"),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": StatsImport.model_json_schema()},
                "application/x-safetensors": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    },
    responses=PROBLEMS,
)
def put_stats(
    session_id: str,
    body: BodyDep,
    store: StoreDep,
    commits: CommitsDep,
    if_match: IfMatchDep,
    format: Annotated[
        Literal["json", "keras", "onnx"] | None, Query(description="JSON convention")
    ] = None,
) -> Response:
    media = content_type(body.content_type, _EXPORT_TYPES)
    if media == SAFETENSORS:
        values = _from_safetensors(body.data)
    else:
        doc = parse_json(body.data)
        if format in ("keras", "onnx"):
            if not isinstance(doc, dict):
                raise MalformedBody(f"{format} stats must be a JSON object")
            doc = bncore.import_values(doc, format)
        values = _validated(doc)

    out = commits.change(
        store, store.read(session_id), lambda st: apply_import(st, values), if_match=if_match
    )
    doc = export_json(out.session.state)
    return to_response(json_replay(doc, headers={"ETag": etag(out.session.version)}))
