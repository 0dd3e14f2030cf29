"""The CPU hot loops in C (``bncore._cpu``), split by rows over one thread per core.

Each function returns None where the C kernels do not apply (not built, a GPU array, float16,
a non-contiguous view): the caller then does the same maths with its array namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bncore.backend import THREADS, Array, is_host, namespace

if TYPE_CHECKING:
    from bncore.moments import Moments

try:
    from bncore import _cpu
except ImportError:  # built without a C compiler: the NumPy fallback computes the same
    _cpu = None  # type: ignore[assignment]

__all__ = ["affine", "available", "fit_small", "moments", "scale_shift", "update"]

# Below this many elements one thread beats handing rows to a second thread (measured).
_PARALLEL = 1 << 20


def available() -> bool:
    """True when the C kernels were built."""
    return _cpu is not None


def _applies(x3: Array) -> bool:
    return (
        _cpu is not None
        and type(x3) is np.ndarray
        and x3.dtype.char in "fd"
        and x3.dtype.isnative
        and x3.flags.c_contiguous
    )


def _threads(a: int, size: int) -> int:
    """Threads to split ``a`` rows over: one per core for big arrays, else one (below
    ``_PARALLEL`` elements a second thread costs more than it saves)."""
    return 1 if size < _PARALLEL else max(1, min(THREADS, a))


def moments(x3: Array) -> tuple[Array, Array, bool] | None:
    """Per-channel mean and M2 (float64) of a (A, C, B) array, and whether M2 is finite
    everywhere. In C, each cache-sized piece gets an exact two-pass mean and M2 in double,
    folded in with Chan's update; big arrays are split by rows over OpenMP threads, whose
    ranges are merged in order with the same update."""
    if not _applies(x3) or x3.size == 0:
        return None
    xp = namespace(x3)
    a, c, b = x3.shape
    mean, m2 = xp.empty(c), xp.empty(c)
    threads = _threads(a, x3.size)
    if threads == 1:  # small: no fork
        return mean, m2, _cpu.moments(x3, a, c, b, 0, a, mean, m2)
    # The threads in C: an OpenMP fork costs microseconds, a Python pool's hand-off tens.
    return mean, m2, _cpu.moments_mt(x3, a, c, b, threads, mean, m2)


def affine(x3: Array, center: Array, scale: Array, offset: Array) -> tuple[Array, bool] | None:
    """y = (x - center) * scale + offset per channel, each element in double and rounded once
    to x's dtype, and whether every y is finite.

    ``center``, ``scale`` and ``offset`` are contiguous float64 (C,) vectors (the C side
    checks it)."""
    if not _applies(x3) or x3.size == 0:
        return None
    a, c, b = x3.shape
    out = np.empty_like(x3)
    threads = _threads(a, x3.size)
    if threads == 1:
        return out, _cpu.affine(x3, a, c, b, 0, a, center, scale, offset, out)
    return out, _cpu.affine_mt(x3, a, c, b, threads, center, scale, offset, out)


def _host_vector(a: Array) -> bool:
    # A state's vectors all live in one namespace: one of them tells for all.
    return _cpu is not None and is_host(namespace(a))


def scale_shift(
    mean: Array, var: Array, eps: float, weight: Array | None, bias: Array | None
) -> tuple[Array, Array] | None:
    """weight / sqrt(var + eps) and bias - mean * scale, float64 (C,), in one call."""
    if not _host_vector(mean):
        return None
    scale, shift = np.empty_like(mean), np.empty_like(mean)
    _cpu.scale_shift(mean, var, eps, weight, bias, scale, shift)
    return scale, shift


def update(
    batch: Moments,
    weights: tuple[float, float, bool],
    running_mean: Array | None,
    running_var: Array | None,
    population: Moments,
) -> tuple[Array | None, Array | None, Array, Array, Array] | None:
    """The running EMA ``w_new * batch + w_old * old`` of the mean and of the (biased or
    unbiased) batch variance, ``weights = (w_new, w_old, biased)``, None buffers when not
    tracked; and the population merged with the batch (count, mean, M2), in one call: the
    formulas of ``batchnorm._update_running`` and ``Moments.merge``."""
    if not _host_vector(batch.mean):
        return None
    rm = None if running_mean is None else np.empty_like(running_mean)
    rv = None if running_var is None else np.empty_like(running_var)
    count, mean, m2 = (np.empty_like(batch.mean) for _ in range(3))
    w_new, w_old, biased = weights
    _cpu.update(
        batch.mean,
        batch.m2,
        batch.count,
        w_new,
        w_old,
        biased,
        running_mean,
        running_var,
        rm,
        rv,
        population.count,
        population.mean,
        population.m2,
        count,
        mean,
        m2,
    )
    return rm, rv, count, mean, m2


def fit_small(
    x3: Array,
    eps: float,
    weights: tuple[float, float, bool],
    weight: Array | None,
    bias: Array | None,
    running_mean: Array | None,
    running_var: Array | None,
    population: Moments,
    output: bool,
) -> tuple[Array | None, tuple[Array, Array, Array], tuple[Any, ...], bool] | None:
    """A whole train-mode step in one C call for batches too small to thread: ``(y, (count,
    mean, M2) of the batch, (running_mean, running_var, pop count, pop mean, pop M2) after it,
    whether M2 is finite)``; None where the kernels do not apply."""
    if not _applies(x3) or x3.size >= _PARALLEL or type(population.mean) is not np.ndarray:
        return None
    a, c, b = x3.shape
    y = np.empty_like(x3) if output else None
    # one allocation for the six (C,) vectors: rows of a (6, C) block
    cnt, mean, m2, pc, pm, pm2 = np.empty((6, c))
    rm = None if running_mean is None else np.empty_like(running_mean)
    rv = None if running_var is None else np.empty_like(running_var)
    w_new, w_old, biased = weights
    finite = _cpu.fit_small(
        x3, a, c, b, eps, w_new, w_old, biased, weight, bias, running_mean, running_var,
        population.count, population.mean, population.m2, y, cnt, mean, m2, rm, rv, pc, pm, pm2,
    )  # fmt: skip
    return y, (cnt, mean, m2), (rm, rv, pc, pm, pm2), finite
