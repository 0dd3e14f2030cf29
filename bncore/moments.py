"""Per-channel moments: batch moments of an array, and exact population moments merged with
Chan's parallel formula. Always two-pass deviations in float64, never E[x^2] - E[x]^2."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from bncore import cuda_kernels, kernels
from bncore.backend import Array, is_host, namespace
from bncore.errors import BatchSizeError, NonFiniteError, ShapeError

__all__ = ["Moments", "NanPolicy", "batch_moments", "channels_view"]

NanPolicy = Literal["reject", "propagate", "omit"]


@dataclass(frozen=True, init=False)
class Moments:
    """Count, mean and sum of squared deviations (M2) per channel, all float64, shape (C,)."""

    count: Array
    mean: Array
    m2: Array

    def __init__(self, count: Array, mean: Array, m2: Array) -> None:
        # The instance dict filled directly, not the frozen __init__'s object.__setattr__ per
        # field: every fit builds a few of these, and a small fit's whole budget is some 10 us.
        d = self.__dict__
        d["count"], d["mean"], d["m2"] = count, mean, m2

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
        with quiet(xp):
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


def quiet(xp: ModuleType) -> AbstractContextManager[Any]:
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


def _exact_moments(x3: Array) -> tuple[Array, Array]:
    """Two-pass float64 mean and M2 of the whole array, in the array's namespace."""
    xp = namespace(x3)
    x64 = x3.astype(xp.float64)
    mean = x64.sum(axis=(0, 2)) / (x3.shape[0] * x3.shape[2])
    x64 -= mean[:, None]
    return mean, xp.einsum("ijk,ijk->j", x64, x64)


def _dense_moments(x3: Array) -> tuple[Array, Array, bool]:
    """Mean and M2 per channel, and whether M2 is finite everywhere (it is NaN or Inf exactly
    where the channel holds one): the C kernels on the CPU, else the same maths with ``xp``."""
    found = kernels.moments(x3)
    if found is not None:
        return found
    on_device = cuda_kernels.moments(x3)
    if on_device is not None:
        return on_device[1], on_device[2], on_device[3]
    with quiet(namespace(x3)):  # inf - inf in the deviations: the NaN policy reports it
        mean, m2 = _exact_moments(x3)
        return mean, m2, math.isfinite(float(m2.sum()))


def _nonfinite_channels(xp: ModuleType, *stats: Array) -> list[int]:
    bad = ~xp.isfinite(stats[0])
    for s in stats[1:]:
        bad |= ~xp.isfinite(s)
    return [int(i) for i in xp.nonzero(bad)[0].tolist()]


def _omit_moments(x3: Array) -> tuple[Array, Array, Array]:
    """Count, mean and M2 ignoring NaN (scikit-learn's partial_fit rule); Inf is still bad."""
    xp = namespace(x3)
    on_device = cuda_kernels.moments(x3, omit=True)
    if on_device is not None:
        count, mean, m2, finite = on_device
        if not finite:  # NaN is skipped: what is left non-finite is an Inf
            raise NonFiniteError(_nonfinite_channels(xp, mean, m2))
        return count, mean, m2
    x64 = x3.astype(xp.float64)
    nan = xp.isnan(x64)
    if bool(xp.isinf(x64).any()):
        raise NonFiniteError(_nonfinite_channels(xp, xp.where(nan, 0.0, x64).sum(axis=(0, 2))))
    count = (~nan).sum(axis=(0, 2)).astype(xp.float64)
    x64[nan] = 0.0
    with quiet(xp):
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
    found = kernels.stats(x3)
    if found is not None:
        count, mean, m2, finite = found
    else:
        mean, m2, finite = _dense_moments(x3)
        count = xp.full(c, float(n))
    if nan_policy == "reject" and not finite:
        raise NonFiniteError(_nonfinite_channels(xp, mean, m2))
    return Moments(count, mean, m2)
