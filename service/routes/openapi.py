"""OpenAPI for routes that answer raw ``Response`` objects: what their bodies, headers and
errors look like, in one table keyed by (method, path template).

Routes keep small decorator hints (``headers``, ``tensor_body``, ...); the table is the truth.
The body models are in ``service/schemas.py``; ``routes/openapi_schema.py`` applies the table
to the schema FastAPI generates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

REF = "#/components/schemas/{model}"
NPY, SAFETENSORS, ONNX = "application/x-npy", "application/x-safetensors", "application/onnx"
OCTET, PROBLEM_JSON = "application/octet-stream", "application/problem+json"


def ref(model: str) -> dict[str, str]:
    return {"$ref": REF.format(model=model)}


def _binary(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary", "description": description}}


_NPY = _binary("one .npy file (v1/v2, little-endian, C order, no pickle)")
_SAFETENSORS = _binary("a safetensors file")

# If-Match as deps.parse_if_match reads it: *, or ETags of 1 to 18 digits (below 2^63).
_ETAG_RE = r'(W/)?("[0-9]{1,18}"|[0-9]{1,18})'
_IF_MATCH = rf"^(\*|{_ETAG_RE}([ \t]*,[ \t]*{_ETAG_RE})*)$"

# Request headers the dependencies read (they are not FastAPI ``Header`` parameters). The
# patterns say exactly what ``service/deps.py`` accepts: schemathesis checks both directions.
HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "If-Match": (
        'Apply only if the session is at one of these versions (ETags: "3", or a list "3", '
        '"4"); else 412. * or absent: any version',
        {"type": "string", "pattern": _IF_MATCH, "examples": ['"3"']},
    ),
    "Idempotency-Key": (
        "A retry with the same key returns the first answer and changes nothing; the same key "
        "with another body is 422. 1 to 255 characters (surrounding quotes are not part of "
        "it); use a fresh one, such as a UUID, per change",
        {"type": "string", "pattern": r'^"*[^"](.{0,253}[^"])?"*$'},
    ),
    "Inference-Header-Content-Length": (
        "With binary tensor data (application/octet-stream): the byte length of the JSON "
        "header that precedes the raw tensor bytes",
        {"type": "string", "pattern": "^[1-9][0-9]{0,9}$"},
    ),
}


def headers(*names: str) -> dict[str, Any]:
    """``openapi_extra`` documenting request headers the dependencies read from the request."""
    return {"parameters": [header_param(n) for n in names]}


def header_param(name: str) -> dict[str, Any]:
    description, schema = HEADERS[name]
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": dict(schema),
    }


# --- request bodies -------------------------------------------------------------------------


def tensor_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads one tensor as JSON or .npy."""
    return {"requestBody": _body(description, {"application/json": _TENSOR_IN, NPY: _NPY})}


# {"data": ..., "shape": ..., "dtype": ...}, or the nested lists alone
_TENSOR_IN = {"schema": {"anyOf": [ref("TensorIn"), ref("Nested")]}}


def multi_body(description: str, members: dict[str, str]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads several named tensors (JSON or safetensors)."""
    props = {k: {"type": "array", "description": v} for k, v in members.items()}
    content = {"application/json": {"schema": {"type": "object", "properties": props}}}
    return {"requestBody": _body(description, {**content, SAFETENSORS: _SAFETENSORS})}


def _body(description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "description": description, "content": content}


def json_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"schema": ref(model), **extra}


# --- responses ------------------------------------------------------------------------------

ERRORS = {
    400: "Malformed request (body, header or parameter)",
    401: "API key missing or not valid",
    404: "Unknown session (or one another API key owns)",
    406: "No acceptable answer format for Accept",
    409: "Conflicts with the session's configuration",
    412: "If-Match does not match the session version",
    413: "Body larger than BNAAS_MAX_BODY_BYTES",
    415: "Unsupported Content-Type or Content-Encoding",
    422: "Valid syntax the session cannot take (shape, dtype, NaN, values), or an "
    "Idempotency-Key reused with another body",
    501: "This format needs an optional extra that is not installed (onnx-model: `onnx`)",
    503: "The session store cannot serve now; retry after Retry-After seconds",
}
_ERRORHEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    503: {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}},
}


def problem(status: int, description: str | None = None) -> dict[str, Any]:
    """An error response: RFC 9457 problem+json."""
    out: dict[str, Any] = {
        "description": description or ERRORS[status],
        "content": {PROBLEM_JSON: json_body("Problem")},
    }
    if status in _ERRORHEADERS:
        out["headers"] = copy.deepcopy(_ERRORHEADERS[status])
    return out


PROBLEMS: dict[int | str, Any] = {s: problem(s) for s in (400, 404, 412, 413, 415, 422)}


def tensor_response(
    description: str, headers: dict[str, str] | None = None
) -> dict[int | str, Any]:
    """``responses`` for a route that answers one tensor (format by Accept)."""
    return {200: _ok(description, {"application/json": json_body("Tensor"), NPY: _NPY}), **PROBLEMS}


def _ok(
    description: str, content: dict[str, Any] | None, **headers: tuple[str, bool]
) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if content:
        out["content"] = content
    if headers:
        out["headers"] = {
            name.replace("_", "-"): {
                "description": text,
                "required": required,
                "schema": {"type": "string"},
            }
            for name, (text, required) in headers.items()
        }
    return out


_ETAG = ("the session version after this request, as a strong ETag", True)
_REPLAYED = ("true when this is the saved answer of an earlier request (Idempotency-Key)", False)


def _json_ok(model: str, description: str, **headers: tuple[str, bool]) -> dict[str, Any]:
    return _ok(description, {"application/json": json_body(model)}, **headers)


# --- the table ------------------------------------------------------------------------------

# Error sets: what a route can answer besides success (401 is added when keys are configured).
_READ = (404, 503)
_TENSOR = (400, 404, 406, 409, 413, 415, 422, 503)
_CHANGE = (400, 404, 406, 409, 412, 413, 415, 422, 503)
_V2 = (400, 404, 413, 503)


@dataclass(frozen=True)
class Op:
    """One operation's documentation: success responses, error statuses, request body (None
    keeps the route's own), extra request headers, and whether it takes an API key."""

    ok: dict[int, dict[str, Any]]
    errors: tuple[int, ...] = ()
    body: dict[str, Any] | None = None
    headers: tuple[str, ...] = ()
    keyed: bool = True
    # The unversioned V2 routes share a function with the versioned ones; FastAPI shows its
    # ``version`` argument as a query parameter there, which no client should send.
    drop_query: tuple[str, ...] = ()


_SESSION_V = "/v1/sessions/{session_id}"
_V2_MODEL = "/v2/models/{session_id}"
_FITHEADERS = {
    "ETag": _ETAG,
    "BN_Num_Batches_Tracked": ("num_batches_tracked after the fit", True),
    "BN_Batch_Mean": ("(.npy answers, C <= BNAAS_STATS_HEADER_MAX_FEATURES) base64 <f8", False),
    "BN_Batch_Var": ("(.npy answers) base64 <f8 biased batch variance", False),
    "Idempotent_Replayed": _REPLAYED,
}
_INFER = Op(
    ok={
        200: _ok(
            "The output tensor: JSON, or (binary_data_output) a JSON header followed by the raw "
            "little-endian tensor bytes, its length in Inference-Header-Content-Length",
            {"application/json": json_body("V2InferAnswer"), OCTET: _binary("JSON header + bytes")},
            Inference_Header_Content_Length=("with binary output: the JSON header's length", False),
            Idempotent_Replayed=_REPLAYED,
        )
    },
    errors=(*_V2, 406, 415, 422),
    body=_body(
        "A V2 inference request: JSON, or JSON followed by raw tensor bytes whose JSON length "
        "is given in Inference-Header-Content-Length. parameters.mode is 'transform' (default) "
        "or 'fit'.",
        {
            "application/json": json_body("V2InferRequest"),
            OCTET: _binary("the JSON request header, then the raw little-endian tensor bytes"),
        },
    ),
    headers=("Inference-Header-Content-Length",),
)
_V2_META = Op(ok={200: _json_ok("V2Model", "The model (session) metadata")}, errors=_V2)
_V2_READY = Op(ok={200: _ok("The model (session) is ready", None)}, errors=_V2)
_UNVERSIONED = ("version",)

OPERATIONS: dict[tuple[str, str], Op] = {
    ("get", "/healthz"): Op(ok={200: _json_ok("Health", "The process answers")}, keyed=False),
    ("get", "/readyz"): Op(
        ok={
            200: _json_ok("Ready", "The store answers; which array backend runs"),
            503: _ok(
                "The store cannot serve (a probe answer, not a problem)",
                {"application/json": json_body("NotReady")},
                Retry_After=("seconds", True),
            ),
        },
        keyed=False,
    ),
    ("get", "/metrics"): Op(
        ok={
            200: _ok(
                "Prometheus text exposition format (process-wide totals)",
                {"text/plain": {"schema": {"type": "string"}}},
            )
        },
        keyed=False,
    ),
    ("post", "/v1/sessions"): Op(
        ok={
            201: _json_ok(
                "SessionView",
                "The new session",
                ETag=_ETAG,
                Location=("the session's URL", True),
                Idempotent_Replayed=_REPLAYED,
            )
        },
        errors=(400, 413, 415, 422, 503),
    ),
    ("get", "/v1/sessions"): Op(
        ok={200: _json_ok("SessionList", "One page of sessions, ordered by id")},
        errors=(422, 503),
    ),
    ("get", _SESSION_V): Op(
        ok={200: _json_ok("SessionView", "The session", ETag=_ETAG)}, errors=_READ
    ),
    ("delete", _SESSION_V): Op(ok={204: _ok("Deleted", None)}, errors=(400, 404, 412, 503)),
    ("post", f"{_SESSION_V}/reset"): Op(
        ok={200: _json_ok("SessionView", "The session after the reset", ETag=_ETAG)},
        errors=(400, 404, 412, 422, 503),
    ),
    ("post", f"{_SESSION_V}/transform"): Op(
        ok={
            200: _ok(
                "The normalized batch, same shape and dtype",
                {"application/json": json_body("Tensor"), NPY: _NPY},
                ETag=("the session version used", True),
            )
        },
        errors=_TENSOR,
        body=_body(
            "A batch (N, C, ...) or channels-last, JSON or .npy",
            {"application/json": _TENSOR_IN, NPY: _NPY},
        ),
    ),
    ("post", f"{_SESSION_V}/fit"): Op(
        ok={
            200: _ok(
                "The normalized batch with the batch statistics (JSON; with ?output=false only "
                "the statistics), or the batch as .npy with the statistics in headers",
                {"application/json": json_body("FitAnswer"), NPY: _NPY},
                **_FITHEADERS,
            )
        },
        errors=_CHANGE,
        body=_body(
            "A batch with more than one value per channel, JSON or .npy",
            {"application/json": _TENSOR_IN, NPY: _NPY},
        ),
    ),
    ("post", f"{_SESSION_V}/backward"): Op(
        ok={
            200: _ok(
                "grad_input, grad_weight, grad_bias as JSON, or tensors of those names in a "
                "safetensors file",
                {"application/json": json_body("BackwardAnswer"), SAFETENSORS: _SAFETENSORS},
                ETag=_ETAG,
                Idempotent_Replayed=_REPLAYED,
            )
        },
        errors=_CHANGE,
        body=_body(
            "The forward input and dL/dy of the same shape",
            {"application/json": json_body("BackwardIn"), SAFETENSORS: _SAFETENSORS},
        ),
    ),
    ("post", f"{_SESSION_V}/fold"): Op(
        ok={
            200: _ok(
                "The folded weight and bias, as JSON or a safetensors file",
                {"application/json": json_body("FoldAnswer"), SAFETENSORS: _SAFETENSORS},
                ETag=("the session version used", True),
            )
        },
        errors=_TENSOR,
        body=_body(
            "The preceding layer's weight (C, ...) and optional bias (C,)",
            {"application/json": json_body("FoldIn"), SAFETENSORS: _SAFETENSORS},
        ),
    ),
    ("post", f"{_SESSION_V}/merge"): Op(  # the request body: the route's own MergeBody
        ok={
            200: _json_ok(
                "MergeAnswer",
                "The population moments after the merge",
                ETag=_ETAG,
                Idempotent_Replayed=_REPLAYED,
            )
        },
        errors=_CHANGE,
    ),
    ("get", f"{_SESSION_V}/stats"): Op(
        ok={
            200: _ok(
                "JSON with PyTorch names (default), Keras, ONNX or scikit-learn names; a "
                "safetensors state_dict; or a runnable ONNX model",
                {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                ref("StatsExport"),
                                ref("KerasStats"),
                                ref("OnnxStats"),
                                ref("SklearnStats"),
                            ]
                        }
                    },
                    SAFETENSORS: _binary("a torch.nn.BatchNorm state_dict"),
                    ONNX: _binary("an ONNX model with one BatchNormalization node"),
                },
                ETag=_ETAG,
            )
        },
        errors=(400, 404, 406, 422, 501, 503),
    ),
    ("put", f"{_SESSION_V}/stats"): Op(
        ok={200: _json_ok("StatsExport", "The statistics after the import", ETag=_ETAG)},
        errors=_CHANGE,
    ),
    ("get", f"{_SESSION_V}/history"): Op(
        ok={200: _json_ok("History", "Recent fits, newest first")},
        errors=(404, 422, 503),
    ),
    ("get", "/v2"): Op(ok={200: _json_ok("V2Server", "Server metadata")}, keyed=False),
    ("get", "/v2/health/live"): Op(ok={200: _ok("The server is live", None)}, keyed=False),
    ("get", "/v2/health/ready"): Op(
        ok={
            200: _ok("The server is ready", None),
            503: _json_ok("V2Error", "The store cannot serve"),
        },
        keyed=False,
    ),
    ("get", _V2_MODEL): replace(_V2_META, drop_query=_UNVERSIONED),
    ("get", f"{_V2_MODEL}/versions/{{version}}"): _V2_META,
    ("get", f"{_V2_MODEL}/ready"): replace(_V2_READY, drop_query=_UNVERSIONED),
    ("get", f"{_V2_MODEL}/versions/{{version}}/ready"): _V2_READY,
    ("post", f"{_V2_MODEL}/infer"): replace(_INFER, drop_query=_UNVERSIONED),
    ("post", f"{_V2_MODEL}/versions/{{version}}/infer"): _INFER,
}
