"""A well-formed JSON tensor body straight from its text into a NumPy buffer (simdjson), with no
Python object per number.

``decode`` answers only the common case it can prove simple: ``{"data": nested}`` or
``{"data": flat, "shape": [...]}`` (an optional ``dtype`` that names a float type) or a bare
nested list, rectangular, of numbers only, each below 2^53 in magnitude. For anything else it
returns None and ``service.codecs`` decodes the body the general way, with its errors; the two
agree bit for bit wherever this one answers (tests/service/test_json_tensor.py).
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
# simdjson does) and straight from int64 (as NumPy does for an all-integer list) agree.
_EXACT = float(2**53)
_MAX_RANK = 64  # NumPy's
_MAX_DIM = (1 << 63) - 1
_MEMBERS = frozenset(("data", "shape", "dtype"))
# simdjson skips a UTF-8 byte order mark; orjson (the general decoder) refuses it.
_BOM = b"\xef\xbb\xbf"
_OPEN = ord("[")
# A thread keeps its parser, and the parser its buffers, for bodies up to this size; a larger
# body gets a parser of its own that is freed with it.
_KEEP_BYTES = 1 << 20
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
    if type(doc) is not simdjson.Array:
        return None
    dims = _nesting(doc)
    if dims is None or (shape is not None and len(dims) != 1):
        return None
    # Every "[" of the body is the start of a list checked here (the members are known, and
    # a text value, where one could hide, makes as_buffer fail): none holds a nested list in
    # place of a number, and with the lengths checked by _lists, the nesting is exact.
    lists = _lists(doc, dims)
    if not lists or _count(body, _OPEN) != lists + (shape is not None):
        return None
    flat = np.frombuffer(doc.as_buffer(of_type="d"), np.float64)
    # The ufuncs themselves: ndarray.min and .max add a Python call each.
    low, high = np.minimum.reduce(flat), np.maximum.reduce(flat)
    if flat.size != math.prod(dims) or not (low > -_EXACT and high < _EXACT):
        return None
    out = flat.reshape(shape if shape is not None else dims)
    return out if dtype == "float64" else out.astype(dtype)


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
