"""Tensor wire formats <-> NumPy arrays: JSON, .npy and safetensors; never through pydantic.

Decoders take the session's dtype and return arrays of it (service/dtypes.py has the rule).
They raise ``MalformedBody`` (400) for bytes that are not what they claim to be and
``bncore.DTypeError`` (422) for well-formed tensors of a dtype that is refused; nothing else
(``decode_boundary``).
"""

from __future__ import annotations

import functools
import io
import math
import re
import sys
import tokenize
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

import bncore
from service import json_tensor, safetensors_codec
from service.dtypes import (
    FLOAT_NAMES,
    SEND,
    check_session_dtype,
    decode_boundary,
    refuse,
    to_session_dtype,
)
from service.errors import BodyTooLarge, MalformedBody, NotAcceptable, UnsupportedMediaType

JSON = "application/json"
NPY = "application/x-npy"
SAFETENSORS = "application/x-safetensors"
TENSOR_TYPES = (JSON, NPY)
MULTI_TYPES = (JSON, SAFETENSORS)

Array = npt.NDArray[Any]
_NPY_MAGIC = b"\x93NUMPY"
_LITTLE = sys.byteorder == "little"
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


# A client sends the same Accept header request after request: its answer type is kept
# (bounded; an unacceptable one raises again each time). Parsing one costs ~1.6 us.
@functools.lru_cache(maxsize=256)
def negotiate(accept: str | None, default: str, offered: tuple[str, ...]) -> str:
    """Pick the response type from ``Accept`` (RFC 9110: the most specific range gives each
    type its q-value; q=0 means "not acceptable"); ties go to ``default``, then to order."""
    if not accept or not accept.strip():
        return default
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        fields = part.split(";")
        q = 1.0
        for f in fields[1:]:
            k, _, v = f.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
                q = min(max(q, 0.0), 1.0) if q == q else 0.0  # q == q: not NaN
        if fields[0].strip():
            ranges.append((fields[0].strip().lower(), q))

    def quality(mt: str) -> float:
        best, specificity = 0.0, -1
        for rng, q in ranges:
            s = 2 if rng == mt else 1 if rng == mt.split("/")[0] + "/*" else 0
            if (s == 2 or s == 1 or rng == "*/*") and s > specificity:
                best, specificity = q, s
        return best

    candidates = [default, *(t for t in offered if t != default)]
    q, chosen = max((quality(t), -i) for i, t in enumerate(candidates))
    if q > 0:
        return candidates[-chosen]
    raise NotAcceptable(f"cannot answer with {accept!r}; this route offers {', '.join(offered)}")


_INFLATE_FLOOR = 1 << 20  # bodies inflating to under 1 MiB are never refused by ratio


def decompress(body: bytes, encoding: str | None, limit: int, max_ratio: int = 0) -> bytes:
    """Undo ``Content-Encoding`` gzip/deflate, inflating at most ``limit`` bytes and at most
    ``max_ratio`` times the compressed size (0: no ratio bound; never under 1 MiB).

    Inflation stops as soon as a bound is passed, so a bomb costs at most the bound in memory.
    Data after the stream is refused (one gzip member may follow another, as RFC 1952 allows).
    """
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {enc!r} is not supported (gzip, deflate)")
    bound = limit if max_ratio <= 0 else min(limit, max(len(body) * max_ratio, _INFLATE_FLOOR))
    why = f"{limit} bytes" if bound == limit else f"{max_ratio} times its compressed size"
    parts: list[bytes] = []
    total, data = 0, body
    try:
        while True:
            inflater = zlib.decompressobj(wbits=47 if enc != "deflate" else 15)
            out = inflater.decompress(data, bound - total + 1)
            total += len(out)
            if total > bound:
                raise BodyTooLarge(f"decompressed body exceeds {why}")
            parts.append(out)
            if not inflater.eof:
                raise MalformedBody(f"truncated {enc} body")
            data = inflater.unused_data
            if not data:
                break
            if enc == "deflate" or not data.startswith(b"\x1f\x8b"):
                raise MalformedBody(f"{len(data)} byte(s) of trailing data after the {enc} stream")
    except zlib.error as exc:
        raise MalformedBody(f"invalid {enc} body: {exc}") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


# --- JSON -----------------------------------------------------------------------------------

MAX_DIMS = 64  # NumPy's limit on the rank of an array
_MAX_DIM = (1 << 63) - 1


def parse_json(body: bytes) -> Any:
    """orjson parse with a 400 for anything that is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"invalid JSON: {exc}") from None


def _has_bool(value: list[Any]) -> bool:
    """Whether nested lists hold a JSON boolean (NumPy would read ``true`` as 1)."""
    if value and type(value[0]) is list:
        return any(type(v) is bool or (type(v) is list and _has_bool(v)) for v in value)
    return bool in set(map(type, value))


def json_array(
    value: Any, what: str, shape: Any = None, dtype: str = "float64", maybe_bools: bool = True
) -> Array:
    """Nested (or flat, with ``shape``) JSON numbers as an array of ``dtype``; ``null`` is NaN.

    Integer literals are numbers like any other: rounded to the nearest ``dtype`` value (exact up
    to 2^24 in float32, 2^53 in float64); a value beyond the dtype's range is refused (422), and
    so are booleans. ``maybe_bools=False`` skips the boolean scan when the caller knows the body
    holds no ``true``/``false`` at all.
    """
    check_session_dtype(dtype)
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
            arr = np.asarray(value, dtype=np.float64)  # null -> NaN; huge ints -> nearest float
        elif arr.dtype.kind not in "iuf":
            raise ValueError(f"values must be numbers or null, not {arr.dtype}")
    except (ValueError, TypeError, OverflowError) as exc:
        reason = "ragged nested lists" if "inhomogeneous" in str(exc) else str(exc)
        raise MalformedBody(f"{what} is not a rectangular array of numbers ({reason})") from None
    if arr.ndim > MAX_DIMS:
        raise MalformedBody(f"{what} has {arr.ndim} dimensions; at most {MAX_DIMS}")
    # After asarray, so the nesting is known to be at most 64 deep.
    if maybe_bools and _has_bool(value):
        raise bncore.DTypeError(
            f"{what} holds a JSON boolean, which is not a number: {SEND.format(dtype=dtype)}"
        )
    with np.errstate(over="ignore"):
        out = arr.astype(dtype, copy=False)
    if out.size and arr.dtype != out.dtype and np.isinf(out).any():  # JSON has no Inf literal
        first = arr.reshape(-1)[int(np.argmax(np.isinf(out).reshape(-1)))]
        raise bncore.DTypeError(
            f"{what} holds {first!r}, beyond the range of the session's dtype {dtype}"
        )
    if shape is not None:
        dims = _shape(shape, what)
        if out.ndim != 1:
            raise MalformedBody(f"{what} must be a flat list when 'shape' is given")
        if math.prod(dims) != out.size:
            raise MalformedBody(
                f"{what} has {out.size} values; shape {dims} needs {math.prod(dims)}"
            )
        out = reshape(out, dims, what)
    return out


def reshape(arr: Array, dims: Any, what: str) -> Array:
    """``arr.reshape(dims)`` with NumPy's refusals (rank > 64, size overflow) as a 400."""
    try:
        return arr.reshape(dims)
    except ValueError as exc:
        raise MalformedBody(f"{what} cannot take shape {list(dims)}: {exc}") from None


def dims_ok(shape: Any) -> bool:
    """A list or tuple of at most 64 non-negative integers below 2^63 (booleans are not)."""
    return (
        isinstance(shape, (list, tuple))
        and len(shape) <= MAX_DIMS
        and all(type(d) is int and 0 <= d <= _MAX_DIM for d in shape)
    )


def _shape(shape: Any, what: str) -> list[int]:
    if not isinstance(shape, list) or not dims_ok(shape):
        raise MalformedBody(
            f"shape of {what} must be a list of at most {MAX_DIMS} non-negative integers, "
            f"got {str(shape)[:100]}"
        )
    return shape


def json_dtype(doc: Mapping[str, Any]) -> None:
    """Check the optional ``dtype`` member of a JSON tensor body: it may declare any float
    name (the values are converted to the session's dtype all the same)."""
    dtype = doc.get("dtype")
    if dtype is not None and dtype not in FLOAT_NAMES:
        raise bncore.DTypeError(
            f"dtype must be one of {', '.join(FLOAT_NAMES)}, got {str(dtype)[:50]!r}: JSON "
            "numbers are converted to the session's dtype"
        )


def bools_in(body: bytes) -> bool:
    """Whether ``body`` may hold a JSON boolean: it has the text ``true`` or ``false``
    (anywhere, strings included: a "yes" only asks for the exact scan of the arrays)."""
    return _has_word(body, b"true") or _has_word(body, b"false")


def _has_word(body: bytes, word: bytes, tries: int = 16) -> bool:
    # Searching the word's first byte is memchr (measured: ~1 us over 22 KB of numbers, where
    # ``word in body`` takes 10-12); numbers never hold a "t" or an "f", only member names
    # and strings do, so a few tries settle it. A body full of them ends in the plain search.
    at = body.find(word[:1])
    for _ in range(tries):
        if at < 0:
            return False
        if body.startswith(word, at):
            return True
        at = body.find(word[:1], at + 1)
    return at >= 0 and body.find(word, at) >= 0


@decode_boundary
def decode_json_tensor(body: bytes, dtype: str) -> Array:
    """``{"data": nested}`` or ``{"data": flat, "shape": [...]}`` (or a bare nested list)."""
    fast = json_tensor.decode(body, dtype)  # the common case, with no Python object per number
    return fast if fast is not None else decode_json_general(body, dtype)


@decode_boundary
def decode_json_general(body: bytes, dtype: str) -> Array:
    """``decode_json_tensor`` through Python objects (orjson, then NumPy): every body, and the
    errors; the reference that ``json_tensor.decode`` must agree with."""
    doc = parse_json(body)
    bools = bools_in(body)
    if isinstance(doc, list):
        return json_array(doc, "body", dtype=dtype, maybe_bools=bools)
    if not isinstance(doc, dict) or "data" not in doc:
        raise MalformedBody('JSON tensor body must be {"data": [...]} with optional "shape"')
    json_dtype(doc)
    return json_array(doc["data"], "data", doc.get("shape"), dtype, bools)


# By the dtype itself (hashed in C): ``dtype.name`` is computed in Python on every call (~1.5 us).
_DTYPE_NAMES = {np.dtype(name): name for name in ("float16", "float32", "float64")}


def tensor_json(arr: Array) -> dict[str, Any]:
    """A tensor as the JSON members ``data`` (nested), ``shape`` and ``dtype``."""
    name = _DTYPE_NAMES.get(arr.dtype) or arr.dtype.name
    return {"data": np.ascontiguousarray(arr), "shape": list(arr.shape), "dtype": name}


def dumps(doc: Any) -> bytes:
    """orjson with NumPy arrays serialized natively (NaN/Inf become null)."""
    return orjson.dumps(doc, option=_JSON_OPTS)


# --- .npy -----------------------------------------------------------------------------------


# The header numpy itself writes; anything else goes through numpy's (slower) safe parser.
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-z]\d{1,2})', 'fortran_order': (True|False), "
    rb"'shape': \(((?:\d{1,19}, )*\d{1,19},?|)\), \} *\n"
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
        try:
            dtype = np.dtype(m[1].decode())
        except TypeError as exc:
            raise MalformedBody(f"invalid .npy header: descr {m[1].decode()!r}: {exc}") from None
        return shape, m[2] == b"True", dtype, start + hlen
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


# Layouts of the .npy headers decoded so far (v1.0 headers that passed), by the bytes up to
# the end of the header: a client sends the same shape and dtype again and again, and parsing
# and checking a header costs more than the rest of a small decode. Bounded: cleared when full.
_LAYOUTS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype[Any], int, int]] = {}
_LAYOUTS_MAX = 256


@decode_boundary
def decode_npy(body: bytes, dtype: str) -> Array:
    """One ``.npy`` file (v1/v2, no pickle) as an array of ``dtype`` (float32/float64): a
    zero-copy view of the body when it already holds C-order ``dtype`` in native order."""
    check_session_dtype(dtype)
    v1 = body[6:7] == b"\x01" and type(body) is bytes  # (a bytearray's slice is unhashable)
    key = body[: 10 + int.from_bytes(body[8:10], "little")] if v1 else b""
    found = _LAYOUTS.get(key)
    if found is None:
        found = _npy_layout(body, dtype)
        if found[3] == len(key):  # a v1.0 header: the key is the whole header
            if len(_LAYOUTS) >= _LAYOUTS_MAX:
                _LAYOUTS.clear()
            _LAYOUTS[key] = found
    shape, fortran, stored, offset, count = found
    if len(body) - offset != count * stored.itemsize:
        raise MalformedBody(
            f".npy data is {len(body) - offset} bytes; header promises {count * stored.itemsize}"
        )
    arr = np.frombuffer(body, dtype=stored, count=count, offset=offset)
    try:
        arr = arr.reshape(shape, order="F" if fortran else "C")
    except ValueError as exc:
        raise MalformedBody(f".npy shape {shape}: {exc}") from None
    if fortran:
        arr = np.ascontiguousarray(arr)
    return to_session_dtype(arr, dtype, ".npy")


def _npy_layout(body: bytes, dtype: str) -> tuple[tuple[int, ...], bool, np.dtype[Any], int, int]:
    """Shape, Fortran order, dtype, data offset and element count of a .npy ``body`` whose
    header passes every check of ``decode_npy`` (else ``MalformedBody``, or ``DTypeError``
    naming the session's ``dtype``); whether it passes does not depend on ``dtype``."""
    shape, fortran, stored, offset = _npy_header(body)
    if stored.hasobject:
        raise MalformedBody(".npy with Python objects (pickle) is not accepted")
    if not dims_ok(shape):
        raise MalformedBody(f".npy shape must be at most {MAX_DIMS} non-negative sizes: {shape}")
    if stored.kind != "f" or stored.subdtype is not None or stored.names is not None:
        raise refuse(".npy", stored.str if stored.names is None else "structured", dtype)
    return tuple(shape), fortran, stored, offset, math.prod(shape)


def encode_npy(arr: Array) -> bytes:
    """A C-order, little-endian ``.npy`` (v1.0) file of ``arr``, header padded to 64 bytes."""
    return b"".join(npy_parts(arr))


# The .npy headers written so far, by shape and dtype (bounded: cleared when full).
_HEADS: dict[tuple[tuple[int, ...], np.dtype[Any]], bytes] = {}


def npy_parts(arr: Array) -> tuple[bytes, memoryview]:
    """``encode_npy(arr)`` in two parts: the header, and the data as a flat byte view of
    ``arr`` itself when it is already C-order little-endian (else of a converted copy); an
    answer can send them one after the other without copying the data into one body."""
    order = arr.dtype.byteorder
    if not (arr.flags.c_contiguous and (order == "<" or (order in "=|" and _LITTLE))):
        arr = np.require(arr, dtype=arr.dtype.newbyteorder("<"), requirements="C")
    key = (arr.shape, arr.dtype)
    head = _HEADS.get(key)
    if head is None:
        head = _npy_head(arr)
        if len(_HEADS) >= _LAYOUTS_MAX:
            _HEADS.clear()
        _HEADS[key] = head
    return head, arr.reshape(-1).data.cast("B")  # a flat byte view, whatever the rank


def _npy_head(arr: Array) -> bytes:
    """The v1.0 header of a C-order little-endian ``arr``, padded to 64 bytes."""
    shape = ", ".join(str(d) for d in arr.shape) + ("," if arr.ndim == 1 else "")
    descr = arr.dtype.newbyteorder("<").str  # '<f4' whether the dtype says '<' or native '='
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({shape}), }}"
    pad = -(10 + len(text) + 1) % 64
    header = (text + " " * pad + "\n").encode("latin1")
    return b"".join((_NPY_MAGIC, b"\x01\x00", len(header).to_bytes(2, "little"), header))


def decode_tensor(body: bytes, media: str, dtype: str) -> Array:
    """Decode a tensor body of media type ``media`` (JSON or npy) to the session's ``dtype``."""
    if media == NPY:
        return decode_npy(body, dtype)
    return decode_json_tensor(body, dtype)


# --- safetensors and named tensors ----------------------------------------------------------


@decode_boundary
def decode_safetensors(body: bytes) -> tuple[dict[str, Array], dict[str, str]]:
    """Tensors and ``__metadata__`` of a safetensors file, each tensor in its stored dtype
    (BF16 and float8 widened to float32); apply ``to_session_dtype`` to compute with them."""
    return safetensors_codec.decode(body)


encode_safetensors = safetensors_codec.encode


@decode_boundary
def decode_named(body: bytes, media: str, names: tuple[str, ...], dtype: str) -> dict[str, Array]:
    """Named tensors (``/backward``, ``/fold``) from JSON members or a safetensors file, each
    in the session's ``dtype``; absent ones are absent. In JSON, ``shape`` applies to ``data``
    and ``grad_output``."""
    check_session_dtype(dtype)
    if media == SAFETENSORS:
        tensors, _ = safetensors_codec.decode(body)
        return {
            k: to_session_dtype(v, dtype, f"tensor {k!r}") for k, v in tensors.items() if k in names
        }
    return decode_named_json(body, parse_json(body), names, dtype)


@decode_boundary
def decode_named_json(
    body: bytes, doc: Any, names: tuple[str, ...], dtype: str
) -> dict[str, Array]:
    """``decode_named`` for a JSON ``body`` already parsed as ``doc`` (a route that also reads
    other members of the document parses it once)."""
    check_session_dtype(dtype)
    if not isinstance(doc, dict):
        raise MalformedBody(f"JSON body must be an object with members {', '.join(names)}")
    json_dtype(doc)
    bools = bools_in(body)
    shape = doc.get("shape")
    return {
        name: json_array(
            doc[name], name, shape if name in ("data", "grad_output") else None, dtype, bools
        )
        for name in names
        if name in doc
    }
