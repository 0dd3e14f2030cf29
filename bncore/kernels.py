"""The CPU hot loops in C (``bncore._cpu``), split by rows over one thread per core.

Each function returns None where the C kernels do not apply (not built, a GPU array, float16,
a non-contiguous view): the caller then does the same maths with its array namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bncore.backend import THREADS, Array, is_host, namespace

if TYPE_CHECKING:
    from bncore.moments import Moments

try:
    from bncore import _cpu
except ImportError:  # built without a C compiler: the NumPy fallback computes the same
    _cpu = None  # type: ignore[assignment]

__all__ = [
    "affine",
    "available",
    "drift",
    "drift_summary",
    "fit_step",
    "moments",
    "normalize",
    "scale_shift",
    "stats",
    "update",
]

# What the C side raises for a buffer it does not take (another dtype, a non-contiguous
# view, a length that does not match): the caller's NumPy path then computes (or names the
# error) as it would without the kernels.
_NOT_TAKEN = (TypeError, ValueError, BufferError)

_empty = np.empty  # a global lookup, not a module attribute too: these run per fit

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


def affine(
    x: Array,
    center: Array,
    scale: Array,
    offset: Array,
    dims: tuple[int, int, int] | None = None,
) -> tuple[Array, bool] | None:
    """y = (x - center) * scale + offset per channel, each element in double and rounded once
    to x's dtype, and whether every y is finite. ``x`` is (A, C, B), or any array viewed as
    ``dims`` = (A, C, B) (y then has x's shape).

    ``center``, ``scale`` and ``offset`` are contiguous float64 (C,) vectors (the C side
    checks it)."""
    if _cpu is None or type(x) is not np.ndarray or x.size == 0:
        return None
    a, c, b = x.shape if dims is None else dims
    out = np.empty_like(x)
    try:
        if x.size < _PARALLEL:
            return out, _cpu.affine(x, a, c, b, 0, a, center, scale, offset, out)
        return out, _cpu.affine_mt(x, a, c, b, _threads(a, x.size), center, scale, offset, out)
    except _NOT_TAKEN:  # the C side checks dtype, byte order and layout
        return None


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
    if _cpu is None or type(batch.mean) is not np.ndarray:
        return None
    c = batch.mean.shape[0]
    rm = None if running_mean is None else _empty(c, running_mean.dtype)
    rv = None if running_var is None else _empty(c, running_var.dtype)
    out = _empty((3, c))
    w_new, w_old, biased = weights
    pop = population
    try:
        _cpu.update(
            batch.mean, batch.m2, batch.count, w_new, w_old, biased, running_mean, running_var,
            rm, rv, pop.count, pop.mean, pop.m2, out,
        )  # fmt: skip
    except _NOT_TAKEN:
        return None
    return rm, rv, out[0], out[1], out[2]  # indexing: cheaper than unpacking an array


def stats(
    x: Array, dims: tuple[int, int, int] | None = None
) -> tuple[Array, Array, Array, bool] | None:
    """Count, mean and M2 per channel (float64 rows of one block) of a (A, C, B) array, or of
    any array viewed as ``dims`` = (A, C, B), in one call, and whether M2 is finite
    everywhere; None where the kernels do not apply."""
    if _cpu is None or type(x) is not np.ndarray or x.size == 0:
        return None
    a, c, b = x.shape if dims is None else dims
    out = _empty((3, c))
    try:
        finite = _cpu.stats(x, a, c, b, _threads(a, x.size), out)
    except _NOT_TAKEN:  # the C side checks dtype, byte order and layout
        return None
    return out[0], out[1], out[2], finite


def normalize(
    x: Array,
    dims: tuple[int, int, int],
    batch: Moments,
    eps: float,
    weight: Array | None,
    bias: Array | None,
) -> Array | None:
    """``(x - mean) * weight / sqrt(M2 / count + eps) + bias`` per channel of ``x`` viewed as
    ``dims`` = (A, C, B), in one call (the factors and the loop), x's shape and dtype; None
    where the kernels do not apply."""
    if _cpu is None or type(x) is not np.ndarray or x.size == 0:
        return None
    a, c, b = dims
    y = _empty(x.shape, x.dtype)  # x is C-contiguous, or C refuses it
    threads = _threads(a, x.size)
    try:
        _cpu.normalize(x, a, c, b, threads, batch.mean, batch.m2, batch.count, eps, weight, bias, y)
    except _NOT_TAKEN:
        return None
    return y


def fit_step(
    x: Array,
    dims: tuple[int, int, int],
    eps: float,
    weights: tuple[float, float, bool],
    weight: Array | None,
    bias: Array | None,
    running_mean: Array | None,
    running_var: Array | None,
    population: Moments,
    output: bool,
) -> tuple[Array | None, Array, Array | None, Array | None, bool] | None:
    """A whole train-mode step in one C call on ``x`` viewed as ``dims`` = (A, C, B): ``(y
    (x's shape), the (6, C) block of the batch's count, mean and M2 then the merged
    population's, running_mean, running_var, whether M2 is finite)``; None where the kernels
    do not apply."""
    if _cpu is None or type(x) is not np.ndarray:
        return None
    a, c, b = dims
    y = _empty(x.shape, x.dtype) if output else None  # x is C-contiguous, or C refuses it
    out = _empty((6, c))
    rm = None if running_mean is None else _empty(c, running_mean.dtype)
    rv = None if running_var is None else _empty(c, running_var.dtype)
    size = a * c * b
    threads = 1 if size < _PARALLEL else _threads(a, size)
    w_new, w_old, biased = weights
    pop = population
    try:
        finite = _cpu.fit_step(
            x, a, c, b, threads, eps, w_new, w_old, biased, weight, bias,
            running_mean, running_var, pop.count, pop.mean, pop.m2, y, out, rm, rv,
        )  # fmt: skip
    except _NOT_TAKEN:
        return None
    return y, out, rm, rv, finite


def drift(
    batch: Moments, running_mean: Array, running_var: Array, eps: float
) -> tuple[Array, Array, Array] | None:
    """Mean shift, log variance ratio and KL per channel (float64 rows of one block) in one
    call; None where the kernels do not apply."""
    if _cpu is None or type(batch.mean) is not np.ndarray:
        return None
    out = _empty((3, batch.mean.shape[0]))
    try:
        _cpu.drift(batch.mean, batch.m2, batch.count, running_mean, running_var, eps, out)
    except _NOT_TAKEN:
        return None
    return out[0], out[1], out[2]


def drift_summary(
    kl: Array, shift: Array, ratio: Array, top: int
) -> tuple[float, float, float, float, list[int]] | None:
    """``(max KL, mean KL, max |shift|, max |log ratio|, the top channels by KL)`` with
    NumPy's bits, in one pass; None where the kernels do not apply."""
    if _cpu is None or top < 0 or not type(kl) is type(shift) is type(ratio) is np.ndarray:
        return None
    # Contiguous float64 each (inline: one summary per fit, and a call costs as much).
    if not kl.dtype.char == shift.dtype.char == ratio.dtype.char == "d":
        return None
    if not (kl.flags.c_contiguous and shift.flags.c_contiguous and ratio.flags.c_contiguous):
        return None
    return _cpu.drift_summary(kl, shift, ratio, top)
