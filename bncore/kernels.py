"""The CPU hot loops in C (``bncore._cpu``), split by rows over one thread per core.

Each function returns None where the C kernels do not apply (not built, a GPU array, float16,
a non-contiguous view): the caller then does the same maths with its array namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bncore.backend import THREADS, Array, is_host, namespace, parallel_map

if TYPE_CHECKING:
    from bncore.moments import Moments

try:
    from bncore import _cpu
except ImportError:  # built without a C compiler: the NumPy fallback computes the same
    _cpu = None  # type: ignore[assignment]

__all__ = ["affine", "available", "moments", "scale_shift", "update"]

# Below this many elements one thread beats handing rows to a second thread (measured).
_PARALLEL = 1 << 20


def available() -> bool:
    """True when the C kernels were built."""
    return _cpu is not None


def _applies(x3: Array) -> bool:
    return (
        _cpu is not None
        and is_host(namespace(x3))
        and x3.dtype.char in "fd"
        and x3.dtype.isnative
        and x3.flags.c_contiguous
    )


def _chunks(a: int, size: int) -> list[tuple[int, int]]:
    """Row ranges, one per thread for big arrays, else one."""
    if size < _PARALLEL:
        return [(0, a)]
    parts = min(THREADS, a)
    bounds = [a * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts) if bounds[k] < bounds[k + 1]]


def moments(x3: Array) -> tuple[Array, Array, bool] | None:
    """Per-channel mean and M2 (float64) of a (A, C, B) array, and whether M2 is finite
    everywhere. In C, each cache-sized piece gets an exact two-pass mean and M2 in double,
    folded in with Chan's update; the threads' row ranges are merged with ``Moments.merge``."""
    if not _applies(x3) or x3.shape[0] == 0:
        return None
    xp = namespace(x3)
    a, c, b = x3.shape
    chunks = _chunks(a, x3.size)
    if len(chunks) == 1:  # small: no pool hand-off
        mean, m2 = xp.empty(c), xp.empty(c)
        return mean, m2, _cpu.moments(x3, a, c, b, 0, a, mean, m2)
    means = xp.empty((len(chunks), c))
    m2s = xp.empty((len(chunks), c))

    def run(k: int) -> bool:
        r0, r1 = chunks[k]
        return _cpu.moments(x3, a, c, b, r0, r1, means[k], m2s[k])

    finite = all(parallel_map(run, list(range(len(chunks)))))
    from bncore.moments import Moments  # here, not at the top: moments imports this module

    total = Moments.zeros(c, xp)
    with xp.errstate(invalid="ignore", over="ignore"):  # NaN/Inf input: the policy decides
        for k, (r0, r1) in enumerate(chunks):
            total = total.merge(Moments(xp.full(c, float((r1 - r0) * b)), means[k], m2s[k]))
    return total.mean, total.m2, finite


def affine(x3: Array, scale: Array, shift: Array) -> tuple[Array, bool] | None:
    """y = x * scale + shift per channel in x's dtype, and whether every y is finite.

    ``scale`` and ``shift`` are contiguous float64 (C,) vectors (the C side checks it)."""
    if not _applies(x3):
        return None
    xp = namespace(x3)
    a, c, b = x3.shape
    out = xp.empty_like(x3)
    chunks = _chunks(a, x3.size)
    if len(chunks) == 1:
        return out, _cpu.affine(x3, a, c, b, 0, a, scale, shift, out)

    def run(chunk: tuple[int, int]) -> Any:
        return _cpu.affine(x3, a, c, b, chunk[0], chunk[1], scale, shift, out)

    return out, all(parallel_map(run, chunks))


def _host_vector(a: Array) -> bool:
    # A state's vectors all live in one namespace: one of them tells for all.
    return _cpu is not None and is_host(namespace(a))


def scale_shift(
    mean: Array, var: Array, eps: float, weight: Array | None, bias: Array | None
) -> tuple[Array, Array] | None:
    """weight / sqrt(var + eps) and bias - mean * scale, float64 (C,), in one call."""
    if not _host_vector(mean):
        return None
    xp = namespace(mean)
    scale, shift = xp.empty_like(mean), xp.empty_like(mean)
    _cpu.scale_shift(mean, var, eps, weight, bias, scale, shift)
    return scale, shift


def update(
    batch: Moments,
    f: float,
    running_mean: Array | None,
    running_var: Array | None,
    population: Moments,
) -> tuple[Array | None, Array | None, Array, Array, Array] | None:
    """The running EMA with factor ``f`` (None buffers: not tracked) and the population merged
    with the batch (count, mean, M2), in one call; the formulas of ``batchnorm._update_running``
    and ``Moments.merge``."""
    if not _host_vector(batch.mean):
        return None
    xp = namespace(batch.mean)
    rm = None if running_mean is None else xp.empty_like(running_mean)
    rv = None if running_var is None else xp.empty_like(running_var)
    count, mean, m2 = (
        xp.empty_like(batch.mean),
        xp.empty_like(batch.mean),
        xp.empty_like(batch.mean),
    )
    _cpu.update(
        batch.mean,
        batch.m2,
        batch.count,
        f,
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
