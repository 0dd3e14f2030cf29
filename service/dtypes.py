"""The one dtype rule, the same for JSON, .npy, safetensors and V2 bodies.

Every floating-point input (float16, bfloat16, the float8 kinds, float32, float64) is converted
to the session's dtype, and answers are in the session's dtype. PyTorch would raise "mixed
dtype" for float64 into a float32 layer; a service converts, because its clients cannot pick a
layer dtype per request. A finite value beyond the session dtype's range (1e39 into float32) is
refused rather than silently made infinite. Integers, booleans and complex numbers in binary
formats are refused: an int8 image or a boolean mask sent by mistake should not be normalized
as if it were data, and the client can convert exactly what it means.

``decode_boundary`` is the other half of the contract: a decoder raises only the project's own
4xx errors; anything else is a decoder bug, logged as such and answered 400.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

import bncore
from service.errors import MalformedBody, ServiceError

Array = npt.NDArray[Any]
SESSION_DTYPES = ("float32", "float64")
# Names a client may declare for floating-point data (JSON "dtype", safetensors, V2).
FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
SEND = "send floating-point values (the session's dtype, {dtype}, avoids a conversion)"

log = logging.getLogger("bnaas.decode")
P = ParamSpec("P")
R = TypeVar("R")


def refuse(what: str, kind: str, dtype: str) -> bncore.DTypeError:
    """The 422 for a non-float dtype, naming it and what to send instead."""
    return bncore.DTypeError(
        f"{what} has dtype {kind}, which is not accepted: {SEND.format(dtype=dtype)}; integers, "
        "booleans and complex numbers are refused rather than guessed"
    )


def to_session_dtype(arr: Array, dtype: str, what: str) -> Array:
    """``arr`` as a native-order array of ``dtype`` (float32 or float64).

    Zero copy when it already is one (the common binary case); otherwise one converted copy.
    Raises ``DTypeError`` (422) for non-float kinds and for finite values the target cannot hold.
    """
    target = np.dtype(dtype)
    if arr.dtype == target:  # == ignores nothing: '<f4' == '>f4' is False on little-endian
        return arr
    if arr.dtype.kind != "f" or arr.dtype.subdtype is not None:
        raise refuse(what, str(arr.dtype), dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(target)
    if target.itemsize < arr.dtype.itemsize and arr.size:
        overflow = np.isinf(out) & np.isfinite(arr)
        if overflow.any():
            first = arr.reshape(-1)[int(np.argmax(overflow.reshape(-1)))]
            raise bncore.DTypeError(
                f"{what} holds {first!r}, beyond the range of the session's dtype {dtype}"
            )
    return out


def check_session_dtype(dtype: str) -> str:
    """The decode target must be a session dtype (a caller bug otherwise)."""
    if dtype not in SESSION_DTYPES:
        raise ValueError(f"decode target dtype must be float32 or float64, got {dtype!r}")
    return dtype


def decode_boundary(func: Callable[P, R]) -> Callable[P, R]:
    """Let only the project's own errors out of a decoder; anything else is logged as a
    decoder bug (the fuzz tests watch this logger) and answered as a 400."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ServiceError, bncore.BNError):
            raise
        except Exception as exc:
            log.error("decoder bug in %s", func.__name__, exc_info=exc)
            raise MalformedBody(f"body could not be decoded ({type(exc).__name__})") from None

    return wrapper
