"""safetensors files <-> NumPy arrays, with every dtype the format defines.

Parsed here rather than by ``safetensors.numpy.load``, which raises ``KeyError`` on BF16 and
the float8 kinds (NumPy has no such dtypes) and copies every tensor. Tensors become zero-copy
views of the body; BF16 and float8 widen to float32 exactly (every value is representable).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import safetensors.numpy

import bncore
from service.errors import MalformedBody

Array = npt.NDArray[Any]
MAX_HEADER = 100_000_000  # the safetensors library's own limit
MAX_DIMS = 64  # NumPy's limit


def _f8_table(exp_bits: int, man_bits: int, finite_only: bool) -> npt.NDArray[np.float32]:
    """float32 values of the 256 codes of an 8-bit float (OCP FP8: E4M3FN and E5M2)."""
    bias = (1 << (exp_bits - 1)) - 1
    top = (1 << exp_bits) - 1
    values = []
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> man_bits) & top
        m = code & ((1 << man_bits) - 1)
        if finite_only and e == top and m == (1 << man_bits) - 1:
            v = math.nan  # E4M3FN: only S.1111.111 is NaN, no infinities
        elif not finite_only and e == top:
            v = math.inf if m == 0 else math.nan
        elif e == 0:
            v = m / (1 << man_bits) * 2.0 ** (1 - bias)
        else:
            v = (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        values.append(sign * v)
    return np.array(values, dtype=np.float32)


_E8M0 = np.array([2.0 ** (c - 127) for c in range(255)] + [math.nan], dtype=np.float32)
_F8 = {
    "F8_E4M3": _f8_table(4, 3, finite_only=True),
    "F8_E5M2": _f8_table(5, 2, finite_only=False),
    "F8_E8M0": _E8M0,
}
# The dtypes NumPy holds natively, by their safetensors names (all little-endian).
_NATIVE = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}
_SUB_BYTE = ("F4", "F6_E2M3", "F6_E3M2")  # packed below one byte per value
DTYPES = (*_NATIVE, "BF16", *_F8, *_SUB_BYTE)


def _widen(name: str, raw: npt.NDArray[np.uint8]) -> Array:
    """BF16 and float8 codes as exact float32 values."""
    if name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    return _F8[name][raw]


def _dims(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise MalformedBody(f"safetensors tensor {name!r}: shape must be a list of <= 64 sizes")
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < 1 << 63:
            raise MalformedBody(f"safetensors tensor {name!r}: bad dimension {d!r} in shape")
    return tuple(value)


def _tensor(name: str, spec: Any, data: memoryview) -> Array:
    if not isinstance(spec, dict):
        raise MalformedBody(f"safetensors entry {name!r} must be an object")
    kind = spec.get("dtype")
    if not isinstance(kind, str) or kind not in DTYPES:
        raise MalformedBody(f"safetensors tensor {name!r} has unknown dtype {kind!r}")
    if kind in _SUB_BYTE:
        raise bncore.DTypeError(
            f"safetensors tensor {name!r} is {kind} (packed below one byte), which is not "
            "accepted: send F16, BF16, F32 or F64"
        )
    shape = _dims(spec.get("shape"), name)
    offsets = spec.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= len(data)
    ):
        raise MalformedBody(
            f"safetensors tensor {name!r}: data_offsets {offsets!r} are outside the "
            f"{len(data)}-byte data section"
        )
    itemsize = _NATIVE[kind].itemsize if kind in _NATIVE else (2 if kind == "BF16" else 1)
    count = math.prod(shape)
    begin, end = offsets
    if end - begin != count * itemsize:
        raise MalformedBody(
            f"safetensors tensor {name!r}: {end - begin} bytes for shape {list(shape)} of "
            f"{kind} ({count * itemsize} expected)"
        )
    if kind in _NATIVE:
        flat = np.frombuffer(data, _NATIVE[kind], count, begin)
    else:
        flat = _widen(kind, np.frombuffer(data, np.uint8, count * itemsize, begin))
    try:
        return flat.reshape(shape)
    except ValueError as exc:
        raise MalformedBody(f"safetensors tensor {name!r}: {exc}") from None


def decode(body: bytes) -> tuple[dict[str, Array], dict[str, str]]:
    """Tensors (each dtype as stored; BF16 and float8 widened to float32) and the string
    ``__metadata__`` of a safetensors file."""
    if len(body) < 8:
        raise MalformedBody("safetensors body is shorter than its 8-byte header length")
    n = int.from_bytes(body[:8], "little")
    if n > MAX_HEADER or 8 + n > len(body):
        raise MalformedBody(f"safetensors header length {n} is outside the {len(body)}-byte body")
    try:
        header = orjson.loads(body[8 : 8 + n])
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedBody("safetensors header must be a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise MalformedBody("safetensors __metadata__ must map strings to strings")
    data = memoryview(body)[8 + n :]
    tensors = {name: _tensor(name, spec, data) for name, spec in header.items()}
    return tensors, dict(meta)


def encode(tensors: dict[str, Array], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file of ``tensors`` (C order, little-endian) with string metadata."""
    # np.require, not np.ascontiguousarray: that one turns 0-d num_batches_tracked into 1-d.
    return safetensors.numpy.save(
        {k: np.require(v, requirements="C") for k, v in tensors.items()}, metadata=metadata
    )
