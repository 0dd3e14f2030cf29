"""Statistics export and import: JSON (PyTorch names), safetensors (a BatchNorm state_dict),
Keras and ONNX documents, a runnable ONNX model and scikit-learn StandardScaler attributes.
Every export imports back bit for bit (``bncore.exchange``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
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
from service.errors import ServiceError
from service.routes.history import MAX_LIMIT, history_entries
from service.routes.openapi import PROBLEMS, headers
from service.views import etag, json_replay, to_response

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["stats"])

ONNX = "application/onnx"


class FormatUnavailable(ServiceError):
    status, slug, title = 501, "format-unavailable", "Export format not available on this server"


Format = Literal["json", "safetensors", "keras", "onnx", "onnx-model", "sklearn"]
_EXPORT_TYPES = (JSON, SAFETENSORS, ONNX)
_PREFIX = Query(
    max_length=200,
    pattern=r"^([A-Za-z0-9_]+\.)*$",
    description="state_dict key prefix of the layer in a model, e.g. `features.1.`",
)


class Population(BaseModel):
    """Exact moments of all fitted data per channel; ``m2`` (sum of squared deviations) is
    what an import restores, ``var`` = m2 / count (biased) is there for readers."""

    model_config = ConfigDict(extra="forbid")
    count: list[float]
    mean: list[float | None]
    var: list[float | None] | None = None
    m2: list[float | None] | None = None


class StatsImport(BaseModel):
    """What ``GET /stats`` produces (JSON); every member is optional (absent ones are kept).
    Documentation only: ``bncore.import_doc`` validates (counts are integers in [0, 2**63),
    eps and momentum finite and in the convention's domain, buffers finite)."""

    model_config = ConfigDict(extra="forbid")
    weight: list[float | None] | None = None
    bias: list[float | None] | None = None
    running_mean: list[float | None] | None = None
    running_var: list[float | None] | None = None
    num_batches_tracked: int | None = Field(None, ge=0, lt=2**63)
    eps: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0, le=1, description="as given, in `convention`")
    convention: Literal["torch", "keras", "onnx"] | None = None
    channel_axis: Literal[1, -1] | None = None
    population: Population | None = None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined: an ``openapi_extra`` schema has no
    ``#/$defs`` to point into (a dangling ``$ref`` stops OpenAPI validators and generators)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


def export_json(state: bncore.BNState) -> dict[str, Any]:
    """PyTorch state_dict names plus eps, momentum (as given), convention, channel_axis and the
    exact population moments."""
    return bncore.export_doc(state, "json")


def _format(request: Request, format: Format | None) -> Format:
    if format is not None:
        return format
    found = negotiate(request.headers.get("accept"), JSON, _EXPORT_TYPES)
    return "safetensors" if found == SAFETENSORS else "onnx-model" if found == ONNX else "json"


@router.get(
    "/stats",
    summary="Export the statistics (JSON, safetensors, Keras, ONNX, ONNX model, scikit-learn)",
    responses={
        200: {
            "description": (
                "JSON by default (PyTorch names); `?format=` or Accept: `safetensors` (a "
                "torch state_dict, `?prefix=`), `keras`/`onnx` (their names, with a `bnaas` "
                "member for an exact import), `onnx-model` (`application/onnx`, `?ndim=`), "
                "`sklearn` (StandardScaler attributes of the population)"
            ),
            "content": {
                "application/json": {"schema": {"type": "object"}},
                SAFETENSORS: {"schema": {"type": "string", "format": "binary"}},
                ONNX: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **PROBLEMS,
    },
)
def get_stats(
    session_id: str,
    request: Request,
    store: StoreDep,
    format: Annotated[Format | None, Query(description="overrides Accept")] = None,
    prefix: Annotated[str, _PREFIX] = "",
    ndim: Annotated[int, Query(ge=2, le=5, description="onnx-model: input rank")] = 2,
    history: Annotated[
        int, Query(ge=0, le=MAX_LIMIT, description="JSON: add the newest N history entries")
    ] = 0,
) -> Response:
    session = store.read(session_id)
    fmt = _format(request, format)
    hdrs = {"ETag": etag(session.version), "Vary": "Accept"}
    state = session.state
    if fmt == "safetensors":
        tensors, meta = bncore.export_tensors(state, prefix)
        return Response(encode_safetensors(tensors, meta), headers=hdrs, media_type=SAFETENSORS)
    if fmt == "onnx-model":
        try:
            model = bncore.onnx_model(state, ndim)
        except bncore.OnnxUnavailable as exc:
            raise FormatUnavailable(
                f"{exc}; other formats: json, safetensors, keras, onnx"
            ) from None
        return Response(model, headers=hdrs, media_type=ONNX)
    if fmt == "sklearn":
        return to_response(json_replay(bncore.sklearn_scaler(state), headers=hdrs))
    doc = bncore.export_doc(state, fmt)
    if history and fmt == "json":
        doc["history"] = history_entries(store, session_id, history)[0]
    return to_response(json_replay(doc, headers=hdrs))


def _overrides(eps: float | None, momentum: float | None) -> dict[str, Any]:
    return {k: v for k, v in (("eps", eps), ("momentum", momentum)) if v is not None}


@router.put(
    "/stats",
    summary="Import (restore) statistics: what GET /stats exports (JSON, safetensors, keras, onnx)",
    openapi_extra={
        **headers("If-Match"),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_schema(StatsImport)},
                SAFETENSORS: {"schema": {"type": "string", "format": "binary"}},
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
    prefix: Annotated[str, _PREFIX] = "",
    eps: Annotated[
        float | None, Query(gt=0, allow_inf_nan=False, description="wins over the body")
    ] = None,
    momentum: Annotated[
        float | None,
        Query(ge=0, le=1, allow_inf_nan=False, description="as given; wins over the body"),
    ] = None,
) -> Response:
    """Validated completely before anything is stored: a bad value is a 422 and changes
    nothing. A safetensors file without eps/momentum metadata (a plain torch state_dict)
    keeps the session's, unless the query gives them; the answer's ``assumed`` says which."""
    media = content_type(body.content_type, (JSON, SAFETENSORS))
    overrides = _overrides(eps, momentum)
    if media == SAFETENSORS:
        tensors, meta = decode_safetensors(body.data)
        doc: Any = None
    else:
        doc = parse_json(body.data)

    assumed: dict[str, Any] = {}

    def change(state: bncore.BNState) -> bncore.BNState:
        if doc is None:
            new, said = bncore.import_tensors(state, tensors, meta, prefix, overrides)
            assumed.update(said)
            return new
        return bncore.import_doc(state, doc, format or "json", overrides)

    out = commits.change(store, store.read(session_id), change, if_match=if_match)
    answer = export_json(out.session.state)
    hdrs = {"ETag": etag(out.session.version)}
    if assumed:
        answer["assumed"] = assumed
        hdrs["BN-Assumed"] = orjson.dumps(assumed).decode()
    return to_response(json_replay(answer, headers=hdrs))
