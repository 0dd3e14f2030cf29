"""A well-formed JSON tensor body straight from its text into a NumPy buffer (simdjson), with no
Python object per number.

``decode`` answers only the common case it can prove simple: ``{"data": nested}`` or
``{"data": flat, "shape": [...]}`` (an optional ``dtype`` that names a float type) or a bare
nested list, rectangular, of numbers only, each below 2^53 in magnitude. For anything else it
returns None and ``service.codecs`` decodes the body the general way, with its errors; the two
agree bit for bit wherever this one answers (tests/service/test_json_tensor.py).
``loads_with_tensor`` does the same for one value inside a larger document (V2 infer requests).
"""

from __future__ import annotations

import math
import threading
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt
import simdjson

from service.dtypes import FLOAT_NAMES, SESSION_DTYPES

Array = npt.NDArray[Any]

# Below 2^53 every integer literal is exact in float64, so converting it through float64 (as
# simdjson does) and straight from int64 (as NumPy does for an all-integer list) agree; and no
# such value is beyond float32's range (the general decoder's 422).
_EXACT = float(2**53)
_MAX_RANK = 64  # NumPy's
_MAX_DIM = (1 << 63) - 1
_MEMBERS = frozenset(("data", "shape", "dtype"))
# simdjson skips a UTF-8 byte order mark; orjson (the general decoder) refuses it.
_BOM = b"\xef\xbb\xbf"
_OPEN = ord("[")
# A thread keeps its parser, and the parser its buffers, for bodies up to this size; a larger
# body gets a parser of its own that is freed with it. Measured: a parser that read a 1 MB body
# keeps 3.2 MB; a new parser adds ~10% to a parse, at 30 KB as at 1 MB. The thread pool has
# tens of threads, so each keeps at most ~0.8 MB.
_KEEP_BYTES = 256 << 10
_REUSED = "Tried to re-use a parser"
_local = threading.local()


def decode(body: bytes, dtype: str) -> Array | None:
    """The body's tensor as an array of ``dtype`` (float32 or float64), or None when the body is
    not the common well-formed case (see the module docstring)."""
    if dtype not in SESSION_DTYPES or body.startswith(_BOM):
        return None
    try:
        return _decode(_parse(body), body, dtype)
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError):
        # Not JSON, or not numbers only (simdjson's as_buffer refuses null, booleans and text;
        # integers beyond 64 bits are a RuntimeError): the general decoder says which.
        return None


def _parse(body: bytes) -> Any:
    if len(body) > _KEEP_BYTES:
        return simdjson.Parser().parse(body)
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        return parser.parse(body)
    except RuntimeError as exc:
        # A document of this parser is still referenced (an exception kept it alive): this
        # thread starts a new parser rather than decode every later body the slow way.
        if not str(exc).startswith(_REUSED):
            raise
        parser = _local.parser = simdjson.Parser()
        return parser.parse(body)


def _decode(doc: Any, body: bytes, dtype: str) -> Array | None:
    shape: list[int] | None = None
    if type(doc) is simdjson.Object:
        names = list(doc)
        # Duplicate names: orjson keeps the last, simdjson finds the first.
        if "data" not in names or len(set(names)) != len(names) or not _MEMBERS.issuperset(names):
            return None
        declared = doc["dtype"] if "dtype" in names else None  # .get() costs a KeyError
        if declared is not None and (type(declared) is not str or declared not in FLOAT_NAMES):
            return None
        given = doc["shape"] if "shape" in names else None
        if given is not None:
            listed = given.as_list() if type(given) is simdjson.Array else None
            if not _dims(listed):
                return None
            shape = listed
        doc = doc["data"]
    return _array(doc, body, shape is not None, dtype, shape)


def _array(
    arr: Any, body: bytes, other_lists: int, dtype: str, shape: list[int] | None = None
) -> Array | None:
    """The rectangular array of numbers ``arr`` (flat when ``shape`` is given) as ``dtype``, or
    None; ``body`` is its document, which holds ``other_lists`` lists outside ``arr``."""
    if type(arr) is not simdjson.Array:
        return None
    dims = _nesting(arr)
    if dims is None or (shape is not None and len(dims) != 1):
        return None
    # The body's "[" are the lists checked here, the other_lists, a list in arr where a number
    # should be, and any "[" in a text: only when there are as many as the first two is there
    # none of the last two, and with the lengths checked by _lists, the nesting is exact.
    lists = _lists(arr, dims)
    if not lists or _count(body, _OPEN) != lists + other_lists:
        return None
    flat = np.frombuffer(arr.as_buffer(of_type="d"), np.float64)
    # The ufuncs themselves: ndarray.min and .max add a Python call each.
    low, high = np.minimum.reduce(flat), np.maximum.reduce(flat)
    if flat.size != math.prod(dims) or not (low > -_EXACT and high < _EXACT):
        return None
    out = flat.reshape(shape if shape is not None else dims)
    return out if dtype == "float64" else out.astype(dtype)


def loads_with_tensor(
    text: bytes, path: tuple[str | int, ...], dtype: str
) -> tuple[dict[str, Any], Array] | None:
    """``orjson.loads(text)``, a JSON object, with the value at ``path`` (member names and list
    indices) read straight into an array of ``dtype`` and put in its place; None unless that
    value passes ``decode``'s conditions, no object on the path has duplicate names, and no
    text holds a "[" (then the caller parses the general way)."""
    if dtype not in SESSION_DTYPES or text.startswith(_BOM) or not path:
        return None
    try:
        doc: Any = _parse(text)
        if type(doc) is not simdjson.Object:
            return None
        return _split(doc, text, path, dtype)
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError):
        return None


def _split(
    doc: Any, text: bytes, path: tuple[str | int, ...], dtype: str
) -> tuple[dict[str, Any], Array] | None:
    """``loads_with_tensor`` of the parsed document ``doc``."""
    root: list[Any] = [None]
    holder: Any = root
    at: str | int = 0
    lists = 0
    for step in path:
        if type(doc) is simdjson.Object and type(step) is str:
            names = list(doc)
            if len(set(names)) != len(names) or step not in names:
                return None  # orjson keeps the last of duplicates, simdjson finds the first
            copy: Any = {name: _python(doc[name]) for name in names if name != step}
        elif type(doc) is simdjson.Array and type(step) is int and 0 <= step < len(doc):
            copy = [_python(v) if i != step else None for i, v in enumerate(doc)]
            lists += 1
        else:
            return None
        holder[at], holder, at = copy, copy, step
        lists += _lists_outside(copy)
        doc = doc[step]
    tensor = _array(doc, text, lists, dtype)
    if tensor is None:
        return None
    holder[at] = tensor
    out: dict[str, Any] = root[0]
    return out, tensor


def _python(value: Any) -> Any:
    """A simdjson value as the Python objects orjson makes (the last of duplicate names wins)."""
    if type(value) is simdjson.Object:
        return value.as_dict()
    if type(value) is simdjson.Array:
        return value.as_list()
    return value


def _lists_outside(value: Any) -> int:
    """The lists in ``value``, a Python copy of a container (itself not counted)."""
    count = 0
    stack = list(value.values()) if isinstance(value, dict) else list(value)
    while stack:
        item = stack.pop()
        if type(item) is list:
            count += 1
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())
    return count


def _dims(shape: Any) -> TypeGuard[list[int]]:
    """A JSON ``shape`` the general decoder takes: at most 64 sizes, none a boolean."""
    return (
        isinstance(shape, list)
        and len(shape) <= _MAX_RANK
        and all(type(d) is int and 0 <= d <= _MAX_DIM for d in shape)
    )


def _nesting(arr: Any) -> list[int] | None:
    """The lengths along the first element at each depth, down to a number; None for an empty
    list, more than 64 levels, or anything but a number (booleans included) at the bottom."""
    dims: list[int] = []
    while type(arr) is simdjson.Array:
        if len(dims) == _MAX_RANK or not len(arr):
            return None
        dims.append(len(arr))
        arr = arr[0]
    return dims if type(arr) is float or type(arr) is int else None


def _lists(arr: Any, dims: list[int]) -> int:
    """How many lists a rectangular ``arr`` of shape ``dims`` is made of, counted while checking
    that every list above the last level holds values of the lengths in ``dims``; 0 when one
    does not (a number has no length: TypeError; a text or an object makes as_buffer fail)."""
    rows, lists = [arr], 1
    for size in dims[1:]:
        rows = [child for row in rows for child in row]
        if list(map(len, rows)).count(size) != len(rows):
            return 0
        lists += len(rows)
    return lists


def _count(body: bytes, byte: int) -> int:
    # A vectorised compare: a third of the time of ``bytes.count`` for one byte (measured).
    return int(np.count_nonzero(np.frombuffer(body, np.uint8) == byte))
