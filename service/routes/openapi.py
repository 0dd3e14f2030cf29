"""OpenAPI request/response descriptions for the raw-body (tensor) routes."""

from __future__ import annotations

from typing import Any

_TENSOR_JSON = {
    "schema": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "array", "description": "nested lists, or a flat list with shape"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "dtype": {"type": "string", "enum": ["float16", "float32", "float64"]},
        },
    },
    "example": {"data": [[1.0, 2.0], [3.0, 5.0]]},
}
_NPY = {
    "schema": {"type": "string", "format": "binary", "description": "one .npy file (no pickle)"}
}
_SAFETENSORS = {"schema": {"type": "string", "format": "binary", "description": "safetensors file"}}


_HEADERS = {
    "If-Match": 'Apply only if the session is at this version (its ETag, e.g. "3"); else 412',
    "Idempotency-Key": "A retry with the same key returns the first answer and changes nothing; "
    "the same key with another body is 422",
}


def headers(*names: str) -> dict[str, Any]:
    """``openapi_extra`` documenting request headers the dependencies read from the request."""
    return {
        "parameters": [
            {
                "name": n,
                "in": "header",
                "required": False,
                "description": _HEADERS[n],
                "schema": {"type": "string"},
            }
            for n in names
        ]
    }


def tensor_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads one tensor as JSON or .npy."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": _TENSOR_JSON, "application/x-npy": _NPY},
        }
    }


def multi_body(description: str, members: dict[str, str]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads several named tensors (JSON or safetensors)."""
    props = {k: {"type": "array", "description": v} for k, v in members.items()}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/json": {"schema": {"type": "object", "properties": props}},
                "application/x-safetensors": _SAFETENSORS,
            },
        }
    }


def tensor_response(
    description: str, headers: dict[str, str] | None = None
) -> dict[int | str, Any]:
    """``responses`` for a route that answers one tensor (format by Accept)."""
    return {
        200: {
            "description": description,
            "content": {
                "application/json": {
                    "example": {"data": [[-1.0, -1.0]], "shape": [1, 2], "dtype": "float32"}
                },
                "application/x-npy": _NPY,
            },
            "headers": {
                k: {"description": v, "schema": {"type": "string"}}
                for k, v in (headers or {}).items()
            },
        },
        **PROBLEMS,
    }


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
PROBLEMS: dict[int | str, Any] = {
    400: {
        "description": "Malformed body (bad JSON, bad .npy header, ragged arrays)",
        "content": _PROBLEM,
    },
    404: {"description": "Unknown session", "content": _PROBLEM},
    412: {"description": "If-Match does not match the session version", "content": _PROBLEM},
    413: {"description": "Body larger than BNAAS_MAX_BODY_BYTES", "content": _PROBLEM},
    415: {"description": "Unsupported Content-Type or Content-Encoding", "content": _PROBLEM},
    422: {
        "description": "Tensor does not fit the session (shape, dtype, NaN, batch size)",
        "content": _PROBLEM,
    },
}
