"""Open Inference Protocol (KServe V2) bodies, with Triton's binary tensor data extension.

A request is a JSON header, optionally followed by raw little-endian tensor bytes whose JSON
length is in ``Inference-Header-Content-Length``. Binary inputs become ``numpy.frombuffer``
views of the body (no copy, no Python lists); binary outputs are written as raw bytes.
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

import bncore
from service import json_tensor
from service.codecs import bools_in, dims_ok, json_array, reshape
from service.dtypes import check_session_dtype, decode_boundary, to_session_dtype
from service.errors import MalformedBody

INPUT, OUTPUT = "INPUT", "OUTPUT"
OCTET = "application/octet-stream"
# Every fixed-size datatype of the protocol (and Triton's BF16), as stored in binary data.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bfloat16 codes, widened to float32 below
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
FLOATS = ("FP16", "BF16", "FP32", "FP64")
_NAMES = {"float16": "FP16", "float32": "FP32", "float64": "FP64"}
# Looked up by the dtype itself (hashed in C): ``dtype.name`` is computed in Python on every
# call (measured: 1.5 us, a third of encoding a 32x64 answer).
_BY_DTYPE = {np.dtype(name): v2 for name, v2 in _NAMES.items()}
_DIGITS = frozenset("0123456789")
_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")
_SEQUENCE_SET = frozenset(_SEQUENCE)
MODES = ("transform", "fit")
_LITTLE = sys.byteorder == "little"


class V2Error(MalformedBody):
    """Bad V2 request: 400 with an ``error`` member, as the protocol asks."""

    slug, title = "invalid-inference-request", "Invalid inference request"


class InferRequest(NamedTuple):
    """A decoded infer request: the one input tensor and how to answer. (A named tuple:
    built on every request, it costs a third of a frozen dataclass.)"""

    id: str | None
    mode: str
    x: npt.NDArray[Any]
    binary_output: bool


def datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a NumPy float dtype."""
    return _BY_DTYPE.get(dtype) or _NAMES[dtype.name]


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise V2Error(f"{where} parameters must be an object")
    return params


def _header(body: bytes, header_length: str | None, dtype: str) -> tuple[dict[str, Any], int]:
    if header_length is None:
        json_end = len(body)
    else:
        # Digits only: int() would also take "1_2_7", " 12", "+12" and non-ASCII digits.
        text = header_length.strip()
        if not text or len(text) > 19 or not _DIGITS.issuperset(text):
            raise V2Error(
                f"Inference-Header-Content-Length must be an integer (ASCII digits), "
                f"got {header_length[:40]!r}"
            )
        json_end = int(text)
        if not 0 < json_end <= len(body):
            raise V2Error(
                f"Inference-Header-Content-Length {json_end} is outside the {len(body)}-byte body"
            )
    # The usual request, its JSON data read straight into the session's dtype (json_tensor).
    fast = json_tensor.loads_with_tensor(body[:json_end], ("inputs", 0, "data"), dtype)
    if fast is not None:
        return fast[0], json_end
    try:
        doc = orjson.loads(body[:json_end])
    except orjson.JSONDecodeError as exc:
        hint = "" if header_length else " (binary data needs Inference-Header-Content-Length)"
        raise V2Error(f"invalid inference request JSON: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise V2Error("inference request must be a JSON object")
    return doc, json_end


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or not dims_ok(value):
        raise V2Error(
            f"input shape must be a list of at most 64 non-negative integers, "
            f"got {str(value)[:100]}"
        )
    return value


# The datatype that is already the session's dtype: its bytes are viewed as they are.
_SAME = {("FP32", "float32"), ("FP64", "float64")}


def _binary(body: bytes, offset: int, count: int, name: str, dtype: str) -> npt.NDArray[Any]:
    raw = np.frombuffer(body, dtype=DATATYPES[name], count=count, offset=offset)
    if _LITTLE and (name, dtype) in _SAME:  # '<f4' is float32 on a little-endian host
        return raw
    if name == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return to_session_dtype(raw, dtype, f"input {INPUT!r}")


class _Plan(NamedTuple):
    """What ``decode_infer`` found in the JSON header of a binary request."""

    id: str | None
    mode: str
    name: str
    shape: tuple[int, ...]
    values: int
    binary_output: bool


# Clients send the same JSON header again and again (one model, one shape; tritonclient adds
# no per-request id unless asked). For a binary input, everything decode_infer checks is a
# function of the header's bytes, the session dtype and the body's length: a header seen
# before with the same three is not parsed and checked again, only its tensor is viewed
# (measured: ~3 of a 32x64 decode's ~5 us). Bounded: emptied when full.
_PLANS: dict[tuple[bytes, str, int], _Plan] = {}
_PLANS_MAX = 256
_PLAN_HEADER_MAX = 2048


def _plan_key(body: bytes, header_length: str | None, dtype: str) -> tuple[bytes, str, int] | None:
    # Only a length that _header takes as it is (ASCII digits, at most 19 of them), so that
    # a hit stands for exactly the request that was checked.
    if header_length is None or len(header_length) > 19:
        return None
    if not (header_length.isascii() and header_length.isdigit()):
        return None
    json_end = int(header_length)
    if not 0 < json_end <= min(len(body), _PLAN_HEADER_MAX):
        return None
    return body[:json_end], dtype, len(body)


@decode_boundary
def decode_infer(body: bytes, header_length: str | None, dtype: str) -> InferRequest:
    """Parse and check an infer request; the input comes out in the session's ``dtype``
    (FP16, BF16, FP32 and FP64 are converted; other datatypes are refused with a 400)."""
    check_session_dtype(dtype)
    key = _plan_key(body, header_length, dtype)
    if key is not None and (plan := _PLANS.get(key)) is not None:
        x = _binary(body, len(key[0]), plan.values, plan.name, dtype)
        return InferRequest(plan.id, plan.mode, x.reshape(plan.shape), plan.binary_output)
    req, plan = _decode(body, header_length, dtype)
    if key is not None and plan is not None:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    return req


def _decode(
    body: bytes, header_length: str | None, dtype: str
) -> tuple[InferRequest, _Plan | None]:
    """``decode_infer`` in full, and its plan when the input is binary."""
    doc, json_end = _header(body, header_length, dtype)
    params = _parameters(doc, "request")
    if params and not _SEQUENCE_SET.isdisjoint(params):
        key = next(k for k in _SEQUENCE if k in params)
        raise V2Error(f"sequence parameter {key!r} is not supported: sessions are named models")
    mode = params.get("mode", "transform")
    if mode not in MODES:
        raise V2Error(f"parameters.mode must be 'transform' or 'fit', got {mode!r}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise V2Error(f"expected exactly one input named {INPUT!r}")
    spec = inputs[0]
    if spec.get("name") != INPUT:
        raise V2Error(f"unknown input {spec.get('name')!r}; the model has one input {INPUT!r}")
    name = spec.get("datatype")
    if not isinstance(name, str) or name not in DATATYPES:
        raise V2Error(f"input datatype must be one of {', '.join(FLOATS)}, got {str(name)[:40]!r}")
    if name not in FLOATS:
        raise bncore.DTypeError(
            f"input {INPUT!r} has datatype {name}, which is not accepted: send {', '.join(FLOATS)} "
            f"(the session's dtype, {_NAMES[dtype]}, avoids a conversion); integers and booleans "
            "are refused rather than guessed"
        )
    dt = DATATYPES[name]
    shape = _shape(spec.get("shape"))
    count = math.prod(shape)
    size = _parameters(spec, "input").get("binary_data_size")
    offset = json_end
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != count * dt.itemsize:
            raise V2Error(
                f"binary_data_size {str(size)[:40]} does not match shape {shape} of {name} "
                f"({count * dt.itemsize} bytes)"
            )
        if offset + size > len(body):
            raise V2Error(f"binary data ends at byte {offset + size}, past the body of {len(body)}")
        x = reshape(_binary(body, offset, count, name, dtype), shape, "input")
        offset += size
        binary = True
    else:
        if "data" not in spec:
            raise V2Error(f"input {INPUT!r} has neither 'data' nor parameters.binary_data_size")
        data = spec["data"]
        if isinstance(data, np.ndarray):  # read by json_tensor, in the session's dtype
            flat = data.reshape(-1)
        else:
            bools = bools_in(body)  # bytes past the JSON can only cost a needless exact scan
            flat = json_array(data, "input data", dtype=dtype, maybe_bools=bools).reshape(-1)
        if flat.size != count:
            raise V2Error(f"input data has {flat.size} values; shape {shape} needs {count}")
        x = reshape(flat, shape, "input")
        binary = False
    if offset != len(body):
        raise V2Error(
            f"{len(body) - offset} byte(s) after the declared tensors: sizes do not add up"
        )
    request_id = doc.get("id")
    req = InferRequest(
        request_id if isinstance(request_id, str) else None,
        mode,
        x,
        _binary_output(doc, params),
    )
    plan = _Plan(req.id, mode, name, tuple(shape), count, req.binary_output) if binary else None
    return req, plan


def _binary_output(doc: dict[str, Any], params: dict[str, Any]) -> bool:
    default = params.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise V2Error("parameters.binary_data_output must be a boolean")
    outputs = doc.get("outputs")
    if outputs is None:
        return default
    if not isinstance(outputs, list):
        raise V2Error("outputs must be a list")
    binary = default
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") != OUTPUT:
            name = out.get("name") if isinstance(out, dict) else out
            raise V2Error(f"unknown output {name!r}; the model has one output {OUTPUT!r}")
        flag = _parameters(out, "output").get("binary_data", default)
        if not isinstance(flag, bool):
            raise V2Error("outputs[].parameters.binary_data must be a boolean")
        binary = flag
    return binary


def encode_infer(
    model: str, req: InferRequest, y: npt.NDArray[Any], parameters: dict[str, Any]
) -> tuple[bytes, dict[str, str], str]:
    """The response body, its extra headers and media type."""
    head, tail, headers, media = encode_infer_parts(model, req, y, parameters)
    # One copy of the tensor bytes, no lists.
    return (head if tail is None else b"".join((head, tail))), headers, media


def encode_infer_parts(
    model: str, req: InferRequest, y: npt.NDArray[Any], parameters: dict[str, Any]
) -> tuple[bytes, memoryview | None, dict[str, str], str]:
    """``encode_infer`` with a binary output left apart: the JSON header, then the tensor as
    a flat byte view of ``y`` itself when it is C-order little-endian (else of a converted
    copy), or None for a JSON answer."""
    out: dict[str, Any] = {"name": OUTPUT, "datatype": datatype(y.dtype), "shape": list(y.shape)}
    doc: dict[str, Any] = {
        "model_name": model,
        "model_version": "1",
        "outputs": [out],
        "parameters": parameters,
    }
    if req.id is not None:
        doc["id"] = req.id
    if not req.binary_output:
        out["data"] = y.reshape(-1)
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), None, {}, "application/json"
    little = y.dtype.byteorder == "<" or (y.dtype.byteorder == "=" and _LITTLE)
    raw = y if little and y.flags.c_contiguous else np.require(y, y.dtype.newbyteorder("<"), "C")
    out["parameters"] = {"binary_data_size": raw.nbytes}
    head = orjson.dumps(doc)
    data = raw.reshape(-1).data.cast("B")
    return head, data, {"Inference-Header-Content-Length": str(len(head))}, OCTET
