"""Tensor wire formats <-> NumPy arrays: JSON, .npy and safetensors; never through pydantic.

Decoders raise ``MalformedBody`` (400) for bytes that are not what they claim to be and
``bncore.DTypeError`` (422) for well-formed tensors of a dtype the engine does not compute in.
"""

from __future__ import annotations

import io
import math
import re
import tokenize
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import safetensors
import safetensors.numpy

import bncore
from service.errors import BodyTooLarge, MalformedBody, NotAcceptable, UnsupportedMediaType

JSON = "application/json"
NPY = "application/x-npy"
SAFETENSORS = "application/x-safetensors"
TENSOR_TYPES = (JSON, NPY)
MULTI_TYPES = (JSON, SAFETENSORS)

Array = npt.NDArray[Any]
_NPY_MAGIC = b"\x93NUMPY"
_FLOAT_KINDS = ("float16", "float32", "float64")
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def media_type(header: str | None) -> str:
    """The bare media type of a Content-Type/Accept entry, lower-cased."""
    return (header or "").split(";", 1)[0].strip().lower()


def content_type(header: str | None, offered: tuple[str, ...]) -> str:
    """The request's media type if the route takes it, else 415 naming what it takes."""
    mt = media_type(header)
    if mt in offered:
        return mt
    shown = mt or "no Content-Type"
    raise UnsupportedMediaType(f"{shown} is not accepted here; send one of: {', '.join(offered)}")


def negotiate(accept: str | None, default: str, offered: tuple[str, ...]) -> str:
    """Pick the response type from ``Accept`` (q-values honoured); ``*/*`` means ``default``."""
    if not accept or not accept.strip():
        return default
    prefs: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        fields = part.split(";")
        q = 1.0
        for f in fields[1:]:
            k, _, v = f.strip().partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        prefs.append((-q, i, fields[0].strip().lower()))
    for neg_q, _, mt in sorted(prefs):
        if neg_q >= 0:
            continue
        if mt in ("*/*", "application/*"):
            return default
        if mt in offered:
            return mt
    raise NotAcceptable(f"cannot answer with {accept!r}; this route offers {', '.join(offered)}")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` gzip/deflate, refusing to inflate past ``limit`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {enc!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=47 if enc != "deflate" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
        if inflater.unconsumed_tail or len(out) > limit:
            raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
        if not inflater.eof:
            raise MalformedBody(f"truncated {enc} body")
    except zlib.error as exc:
        raise MalformedBody(f"invalid {enc} body: {exc}") from None
    return out


def _float_dtype(dtype: np.dtype[Any], what: str) -> None:
    if dtype.name not in _FLOAT_KINDS:
        raise bncore.DTypeError(f"{what} dtype must be float16, float32 or float64, got {dtype}")


# --- JSON -----------------------------------------------------------------------------------


def parse_json(body: bytes) -> Any:
    """orjson parse with a 400 for anything that is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"invalid JSON: {exc}") from None


def json_array(value: Any, what: str, shape: Any = None, dtype: str = "float64") -> Array:
    """Nested (or flat, with ``shape``) JSON numbers as an array; ``null`` becomes NaN."""
    if not isinstance(value, list):
        raise MalformedBody(f"{what} must be a JSON array of numbers")
    try:
        arr = np.asarray(value)  # numbers -> int/float arrays; null -> object; text -> str
        if arr.dtype.kind == "O":
            numbers = (
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                for v in arr.flat
            )
            if not all(numbers):
                raise ValueError("values must be numbers or null")
            arr = np.asarray(value, dtype=dtype)  # null -> NaN
        elif arr.dtype.kind not in "iuf":
            raise ValueError(
                f"values must be numbers or null, not {arr.dtype.kind!r} ({arr.dtype})"
            )
        with np.errstate(over="ignore"):  # 1e39 as float32 is inf: the NaN policy judges it
            arr = arr.astype(dtype, copy=False)
    except (ValueError, TypeError, OverflowError) as exc:
        reason = "ragged nested lists" if "inhomogeneous" in str(exc) else str(exc)
        raise MalformedBody(f"{what} is not a rectangular array of numbers ({reason})") from None
    if shape is not None:
        dims = _shape(shape, what)
        if arr.ndim != 1:
            raise MalformedBody(f"{what} must be a flat list when 'shape' is given")
        if math.prod(dims) != arr.size:
            raise MalformedBody(
                f"{what} has {arr.size} values; shape {dims} needs {math.prod(dims)}"
            )
        arr = arr.reshape(dims)
    return arr


def _shape(shape: Any, what: str) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise MalformedBody(
            f"shape of {what} must be a list of non-negative integers, got {shape!r}"
        )
    return shape


def json_dtype(doc: Mapping[str, Any], default: str) -> str:
    """The optional ``dtype`` member of a JSON tensor body."""
    dtype = doc.get("dtype", default)
    if dtype not in _FLOAT_KINDS:
        raise bncore.DTypeError(f"dtype must be float16, float32 or float64, got {dtype!r}")
    return str(dtype)


def decode_json_tensor(body: bytes, default_dtype: str) -> Array:
    """``{"data": nested}`` or ``{"data": flat, "shape": [...]}`` (or a bare nested list)."""
    doc = parse_json(body)
    if isinstance(doc, list):
        return json_array(doc, "body", dtype=default_dtype)
    if not isinstance(doc, dict) or "data" not in doc:
        raise MalformedBody('JSON tensor body must be {"data": [...]} with optional "shape"')
    return json_array(doc["data"], "data", doc.get("shape"), json_dtype(doc, default_dtype))


def tensor_json(arr: Array) -> dict[str, Any]:
    """A tensor as the JSON members ``data`` (nested), ``shape`` and ``dtype``."""
    return {"data": np.ascontiguousarray(arr), "shape": list(arr.shape), "dtype": arr.dtype.name}


def dumps(doc: Any) -> bytes:
    """orjson with NumPy arrays serialized natively (NaN/Inf become null)."""
    return orjson.dumps(doc, option=_JSON_OPTS)


# --- .npy -----------------------------------------------------------------------------------


# The header numpy itself writes; anything else goes through numpy's (slower) safe parser.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-z]\d+)', 'fortran_order': (True|False), "
    rb"'shape': \(([0-9, ]*)\), \} *\n"
)


def _npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Shape, Fortran order, dtype and data offset of a .npy file (versions 1.0 and 2.0)."""
    if not body.startswith(_NPY_MAGIC) or len(body) < 10:
        raise MalformedBody("body is not a .npy file (bad magic)")
    major = body[6]
    if major == 1:
        start, hlen = 10, int.from_bytes(body[8:10], "little")
    elif major == 2 and len(body) >= 12:
        start, hlen = 12, int.from_bytes(body[8:12], "little")
    else:
        raise MalformedBody(f".npy version {major}.{body[7]} is not supported (1.0, 2.0)")
    if hlen > 10000 or start + hlen > len(body):
        raise MalformedBody(f".npy header length {hlen} is out of range")
    m = _NPY_HEADER.fullmatch(body, start, start + hlen)
    if m is not None:
        shape = tuple(int(d) for d in m[3].split(b",") if d.strip())
        return shape, m[2] == b"True", np.dtype(m[1].decode()), start + hlen
    fp = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(fp)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(fp, max_header_size=10000)
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError) as exc:
        raise MalformedBody(f"invalid .npy header: {exc}") from None
    return shape, fortran, dtype, fp.tell()


def decode_npy(body: bytes) -> Array:
    """One ``.npy`` file (v1/v2, float, no pickle) as a zero-copy view of the body."""
    shape, fortran, dtype, offset = _npy_header(body)
    if dtype.hasobject:
        raise MalformedBody(".npy with Python objects (pickle) is not accepted")
    _float_dtype(dtype, ".npy")
    count = math.prod(shape)
    if len(body) - offset != count * dtype.itemsize:
        raise MalformedBody(
            f".npy data is {len(body) - offset} bytes; header promises {count * dtype.itemsize}"
        )
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if fortran or not dtype.isnative:
        arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))
    return arr


def encode_npy(arr: Array) -> bytes:
    """A C-order, little-endian ``.npy`` (v1.0) file of ``arr``, header padded to 64 bytes."""
    arr = np.require(arr, dtype=arr.dtype.newbyteorder("<"), requirements="C")
    shape = ", ".join(str(d) for d in arr.shape) + ("," if arr.ndim == 1 else "")
    text = f"{{'descr': '{arr.dtype.str}', 'fortran_order': False, 'shape': ({shape}), }}"
    pad = -(10 + len(text) + 1) % 64
    header = (text + " " * pad + "\n").encode("latin1")
    data = arr.reshape(-1).data  # a flat view of the same bytes, whatever the rank
    return b"".join((_NPY_MAGIC, b"\x01\x00", len(header).to_bytes(2, "little"), header, data))


def decode_tensor(body: bytes, media: str, default_dtype: str) -> Array:
    """Decode a tensor body of media type ``media`` (JSON or npy)."""
    if media == NPY:
        return decode_npy(body)
    return decode_json_tensor(body, default_dtype)


# --- safetensors ----------------------------------------------------------------------------


def decode_safetensors(body: bytes) -> tuple[dict[str, Array], dict[str, str]]:
    """Tensors and ``__metadata__`` of a safetensors file."""
    try:
        tensors = safetensors.numpy.load(body)
        meta = _safetensors_metadata(body)
    except (safetensors.SafetensorError, ValueError, TypeError) as exc:
        raise MalformedBody(f"invalid safetensors body: {exc}") from None
    return tensors, meta


def _safetensors_metadata(body: bytes) -> dict[str, str]:
    n = int.from_bytes(body[:8], "little")
    header = orjson.loads(body[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def encode_safetensors(tensors: dict[str, Array], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file of ``tensors`` (C order, little-endian) with string metadata."""
    # np.require, not np.ascontiguousarray: that one turns 0-d num_batches_tracked into 1-d.
    return safetensors.numpy.save(
        {k: np.require(v, requirements="C") for k, v in tensors.items()}, metadata=metadata
    )
