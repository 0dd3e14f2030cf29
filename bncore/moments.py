"""Per-channel moments: batch moments of an array, and exact population moments merged with
Chan's parallel formula. Always two-pass deviations in float64, never E[x^2] - E[x]^2."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from bncore.backend import THREADS, Array, is_host, namespace, parallel_map
from bncore.errors import BatchSizeError, NonFiniteError, ShapeError

__all__ = ["Moments", "NanPolicy", "batch_moments", "channels_view"]

NanPolicy = Literal["reject", "propagate", "omit"]

# Elements per block of the CPU kernel: a block and its deviations stay in L2/L3 cache.
_BLOCK = 1 << 17
# Rows summed in the input dtype before the running total moves to float64.
_RUN = 256
# Below this many elements one block on one thread beats the pool's hand-off cost.
_SERIAL = 1 << 17


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) per channel, all float64, shape (C,)."""

    count: Array
    mean: Array
    m2: Array

    @classmethod
    def zeros(cls, num_features: int, xp: ModuleType) -> Moments:
        """Moments of no data at all."""
        z = xp.zeros(num_features, dtype=xp.float64)
        return cls(z, z.copy(), z.copy())

    @classmethod
    def from_stats(cls, count: Any, mean: Any, var: Any, xp: ModuleType) -> Moments:
        """Moments from per-channel count, mean and biased variance (an export's population).

        ``None``/NaN means and variances are kept (a 'propagate' session may hold them);
        negative or infinite values, and ragged lengths, are a ``ShapeError``."""
        try:
            c = xp.asarray(count, dtype=xp.float64)
            m = xp.asarray([xp.nan if v is None else v for v in mean], dtype=xp.float64)
            v = xp.asarray([xp.nan if v is None else v for v in var], dtype=xp.float64)
        except (TypeError, ValueError) as exc:
            raise ShapeError(
                f"population count, mean and var must be lists of numbers ({exc})"
            ) from None
        if not (c.ndim == m.ndim == v.ndim == 1 and c.shape == m.shape == v.shape):
            raise ShapeError("population count, mean and var must be lists of the same length")
        with _quiet(xp):
            m2 = xp.where(c > 0, v * c, 0.0)
            bad = bool((c < 0).any() | (v < 0).any() | xp.isinf(c).any() | xp.isinf(m).any())
            bad |= bool(xp.isinf(m2).any() | xp.isnan(c).any())
        if bad:
            raise ShapeError("population count and var must be finite and >= 0, mean finite")
        return cls(c, xp.where(c > 0, m, 0.0), m2)

    @property
    def var(self) -> Array:
        """Biased (population) variance, M2 / count; NaN where count is 0."""
        xp = namespace(self.m2)
        return xp.where(self.count > 0, self.m2 / xp.maximum(self.count, 1.0), xp.nan)  # type: ignore[no-any-return]

    def merge(self, other: Moments) -> Moments:
        """Chan, Golub & LeVeque's pairwise update: exact, order-independent up to rounding.

        An empty side contributes nothing: its weight ``frac`` is 0 (or 1 for the other side).
        """
        xp = namespace(self.mean, other.mean)
        n = self.count + other.count
        frac = other.count / xp.maximum(n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * frac
        m2 = self.m2 + other.m2 + delta * delta * self.count * frac
        return Moments(n, mean, m2)


def _quiet(xp: ModuleType) -> AbstractContextManager[Any]:
    """Silence NumPy's divide/invalid warnings where NaN/Inf results are handled explicitly."""
    if is_host(xp):
        return xp.errstate(divide="ignore", invalid="ignore", over="ignore")  # type: ignore[no-any-return]
    return nullcontext()


def channels_view(x: Array, channel_axis: int) -> Array:
    """View ``x`` as (A, C, B): the channel axis in the middle, everything else folded around it.

    No copy for C-contiguous input: (N, C, *S) -> (N, C, prod S); (*S, C) -> (prod S, C, 1).
    """
    shape = x.shape
    axis = channel_axis % x.ndim
    a = 1
    for d in shape[:axis]:
        a *= d
    b = 1
    for d in shape[axis + 1 :]:
        b *= d
    return x.reshape(a, shape[axis], b)


def _column_sums(d: Array) -> tuple[Array, Array]:
    """Float64 sum(d) and sum(d^2) over the rows of a (a, C) array, accumulating at most
    ``_RUN`` rows in the input dtype before moving to float64 (bounds the rounding error)."""
    xp = namespace(d)
    a, c = d.shape
    full = a - a % _RUN
    s1 = xp.zeros(c)
    s2 = xp.zeros(c)
    if full:
        runs = d[:full].reshape(-1, _RUN, c)
        s1 += runs.sum(axis=1).sum(axis=0, dtype=xp.float64)
        s2 += xp.einsum("gij,gij->gj", runs, runs).sum(axis=0, dtype=xp.float64)
    if full < a:
        rest = d[full:]
        s1 += rest.sum(axis=0)
        s2 += xp.einsum("ij,ij->j", rest, rest)
    return s1, s2


def _shifted_moments(xb: Array) -> tuple[Array, Array]:
    """Mean and M2 per channel of one (a, C, b) block.

    Shifted-data form: d = x - K with K the block's own mean estimate, so sum(d) is ~0 and
    M2 = sum(d^2) - sum(d)^2 / n has no cancellation (Chan, Golub & LeVeque 1983). Within a
    block (a few hundred rows, or pairwise sums along b) d and its sums stay in the input dtype;
    block results are float64 and are merged in float64.
    """
    xp = namespace(xb)
    if xb.dtype == xp.float16:
        xb = xb.astype(xp.float32)
    a, c, b = xb.shape
    n = a * b
    if b == 1:
        x2 = xb.reshape(a, c)
        shift = x2.sum(axis=0) / a
        s1, s2 = _column_sums(x2 - shift)
    else:
        shift = xb.sum(axis=(0, 2)) / n
        d = (xb - shift[:, None]).reshape(a * c, b)
        s1 = d.sum(axis=1).reshape(a, c).sum(axis=0)
        s2 = xp.square(d, out=d).sum(axis=1).reshape(a, c).sum(axis=0)
        s1, s2 = s1.astype(xp.float64), s2.astype(xp.float64)
    # Rounding can leave M2 a hair below 0 for a constant channel; it is >= 0 exactly.
    return shift.astype(xp.float64) + s1 / n, xp.maximum(s2 - s1 * s1 / n, 0.0)


def _exact_moments(x3: Array) -> tuple[Array, Array]:
    """Two-pass float64 mean and M2 of the whole array: the slow path for values whose squares
    overflow float32, and the definition the fast path is tested against."""
    xp = namespace(x3)
    x64 = x3.astype(xp.float64)
    mean = x64.sum(axis=(0, 2)) / (x3.shape[0] * x3.shape[2])
    x64 -= mean[:, None]
    return mean, xp.einsum("ijk,ijk->j", x64, x64)


def _blocks(shape: tuple[int, int, int]) -> tuple[int, int]:
    """Rows and channels per block so that one block holds about ``_BLOCK`` elements."""
    _, c, b = shape
    if c * b <= _BLOCK:
        return max(1, _BLOCK // (c * b)), c
    pieces = -(-c * b // _BLOCK)
    return 1, -(-c // pieces)


def _blocked_moments(x3: Array) -> tuple[Array, Array]:
    """Mean and M2 of every channel: cache-sized blocks spread over the CPU's cores."""
    xp = namespace(x3)
    a, c, b = x3.shape
    rows, chans = _blocks(x3.shape)
    row_starts = list(range(0, a, rows))
    means = xp.empty((len(row_starts), c))
    m2s = xp.empty((len(row_starts), c))
    tasks = [(i, r, c0) for i, r in enumerate(row_starts) for c0 in range(0, c, chans)]

    def run(group: list[tuple[int, int, int]]) -> None:
        with _quiet(xp):  # NumPy's error state is per thread: set it in the worker
            for i, r, c0 in group:
                mean, m2 = _shifted_moments(x3[r : r + rows, c0 : c0 + chans])
                means[i, c0 : c0 + chans] = mean
                m2s[i, c0 : c0 + chans] = m2

    n_groups = min(len(tasks), THREADS)
    parallel_map(run, [tasks[g::n_groups] for g in range(n_groups)])
    # Chan's merge in closed form over all row blocks at once (block i holds counts[i] values).
    counts = xp.asarray([min(rows, a - r) * b for r in row_starts], dtype=xp.float64)[:, None]
    mean = (counts * means).sum(axis=0) / counts.sum()
    dev = means - mean
    return mean, m2s.sum(axis=0) + (counts * dev * dev).sum(axis=0)


def _dense_moments(x3: Array) -> tuple[Array, Array]:
    """Mean and M2 per channel; falls back to the float64 two-pass form where the fast form
    overflowed, so that only real NaN/Inf input leaves a non-finite result."""
    xp = namespace(x3)
    if not is_host(xp):
        return _exact_moments(x3)
    if x3.size <= _SERIAL:  # small: plain float64 two-pass is both exact and fewest calls
        return _exact_moments(x3)
    mean, m2 = _blocked_moments(x3)
    if x3.dtype != xp.float64 and not math.isfinite(float(m2.sum())):
        return _exact_moments(x3)
    return mean, m2


def _nonfinite_channels(xp: ModuleType, *stats: Array) -> list[int]:
    bad = ~xp.isfinite(stats[0])
    for s in stats[1:]:
        bad |= ~xp.isfinite(s)
    return [int(i) for i in xp.nonzero(bad)[0].tolist()]


def _omit_moments(x3: Array) -> tuple[Array, Array, Array]:
    """Count, mean and M2 ignoring NaN (scikit-learn's partial_fit rule); Inf is still bad."""
    xp = namespace(x3)
    x64 = x3.astype(xp.float64)
    nan = xp.isnan(x64)
    if bool(xp.isinf(x64).any()):
        raise NonFiniteError(_nonfinite_channels(xp, xp.where(nan, 0.0, x64).sum(axis=(0, 2))))
    count = (~nan).sum(axis=(0, 2)).astype(xp.float64)
    x64[nan] = 0.0
    with _quiet(xp):
        mean = x64.sum(axis=(0, 2)) / count
    x64 -= mean[:, None]
    x64[nan] = 0.0
    return count, mean, xp.einsum("ijk,ijk->j", x64, x64)


def batch_moments(x3: Array, nan_policy: NanPolicy = "reject", min_count: int = 2) -> Moments:
    """Moments of a (A, C, B) batch per channel, checked for train mode.

    Raises ``BatchSizeError`` when a channel has fewer than ``min_count`` values (PyTorch needs
    more than one value per channel in training) and ``NonFiniteError`` for NaN/Inf under
    ``reject``. ``propagate`` lets NaN flow into the result, as PyTorch does.
    """
    xp = namespace(x3)
    a, c, b = x3.shape
    n = a * b
    if nan_policy == "omit":
        count, mean, m2 = _omit_moments(x3)
        short = [int(i) for i in xp.nonzero(count < min_count)[0].tolist()]
        if short:
            raise BatchSizeError(
                f"Expected more than 1 non-NaN value per channel when training; "
                f"channel(s) {short[:16]} have fewer"
            )
        return Moments(count, mean, m2)
    if n < min_count:
        raise BatchSizeError(
            f"Expected more than 1 value per channel when training, got {n} value(s) per channel"
        )
    with _quiet(xp):
        mean, m2 = _dense_moments(x3)
    if nan_policy == "reject" and not math.isfinite(float(m2.sum())):
        raise NonFiniteError(_nonfinite_channels(xp, mean, m2))
    return Moments(xp.full(c, float(n)), mean, m2)
