"""The one module that names NumPy or CuPy: picks the array namespace and moves arrays to host.

Everything else in bncore takes its namespace from its inputs (``namespace(x)``), the
``xp`` idiom of CuPy's generic-code guide and scikit-learn's ``_array_api``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "Array",
    "Backend",
    "Device",
    "is_host",
    "namespace",
    "select",
    "to_host",
]

#: A numpy.ndarray, or a cupy.ndarray that duck-types it.
Array: TypeAlias = npt.NDArray[Any]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Backend:
    """The array namespace chosen at startup, and why."""

    name: Literal["numpy", "cupy"]
    xp: ModuleType
    reason: str

    def asarray(self, a: Any, dtype: Any = None) -> Array:
        """Move ``a`` (host or device array, or nested lists) into this backend."""
        return self.xp.asarray(a, dtype=dtype)  # type: ignore[no-any-return]


def _cupy_with_device() -> tuple[ModuleType | None, str]:
    try:
        import cupy  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:  # the gpu extra is not installed
        return None, f"cupy is not importable ({exc})"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDA driver missing or broken: cupy raises its own types
        return None, f"no usable CUDA device ({exc})"
    if count < 1:
        return None, "no CUDA device"
    return cupy, f"cupy on {count} CUDA device(s)"


def select(device: Device = "auto") -> Backend:
    """Pick the array namespace: ``cpu`` forces NumPy, ``cuda`` requires CuPy and a GPU,
    ``auto`` takes CuPy when it imports and sees a device, else NumPy."""
    if device == "cpu":
        return Backend("numpy", np, "device 'cpu' requested")
    if device not in ("auto", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    cupy, why = _cupy_with_device()
    if cupy is not None:
        return Backend("cupy", cupy, why)
    if device == "cuda":
        raise RuntimeError(f"device 'cuda' requested but {why}")
    return Backend("numpy", np, f"numpy fallback: {why}")


def namespace(*arrays: Any) -> ModuleType:
    """The namespace of the given arrays: CuPy if any of them lives on a GPU, else NumPy."""
    if type(arrays[0]) is np.ndarray and len(arrays) == 1:  # the hot path: one host array
        return np
    for a in arrays:
        if a is not None and type(a).__module__.startswith("cupy"):
            import cupy  # type: ignore[import-not-found, unused-ignore]

            return cupy  # type: ignore[no-any-return]
    return np


def is_host(xp: ModuleType) -> bool:
    """True when ``xp`` computes on the CPU (and so profits from the blocked, threaded kernels)."""
    return xp is np


def to_host(a: Any) -> npt.NDArray[Any]:
    """Return ``a`` as a NumPy array (a device-to-host copy for CuPy, a no-op for NumPy)."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    if get is not None:
        return get()  # type: ignore[no-any-return]
    return np.asarray(a)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


THREADS = _cpu_count()
