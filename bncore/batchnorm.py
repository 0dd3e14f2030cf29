"""BatchNorm as pure functions: train and eval forward, backward, fold.

Each takes a ``BNState`` and arrays and returns results (and a new state where the layer
changes); nothing is mutated in place. Shapes: x is (N, C, *S) for ``channel_axis=1`` or
(*S, C) for ``channel_axis=-1``, 2-D to 5-D; statistics are (C,) float64.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from bncore import kernels
from bncore.backend import Array, namespace
from bncore.errors import DTypeError, NonFiniteError, ShapeError, StateError
from bncore.moments import Moments, batch_moments, channels_view, quiet
from bncore.state import BNState

__all__ = [
    "FitResult",
    "Gradients",
    "affine_params",
    "apply_batch",
    "backward",
    "batch_stats",
    "check_input",
    "fit",
    "fold",
    "normalize",
    "transform",
]

_FLOATS = ("float16", "float32", "float64")
_FLOAT_CHARS = "efd"  # dtype.char of float16, float32, float64


@dataclass(frozen=True)
class FitResult:
    """Train-mode result: the normalized batch (None when not asked for) and the batch's
    moments (biased ``var`` = M2 / count is what normalized it)."""

    output: Array | None
    batch: Moments


@dataclass(frozen=True)
class Gradients:
    """dL/dx (shape and dtype of x) and dL/dweight, dL/dbias ((C,) float64; None without affine)."""

    grad_input: Array
    grad_weight: Array | None
    grad_bias: Array | None


def check_input(x: Array, state: BNState, what: str = "input") -> Array:
    """Validate rank, channel count and dtype like PyTorch; return the (A, C, B) view."""
    cfg = state.config
    if x.dtype.char not in _FLOAT_CHARS or x.dtype.kind != "f":
        raise DTypeError(f"{what} dtype must be one of {', '.join(_FLOATS)}, got {x.dtype.name}")
    if not 2 <= x.ndim <= 5:
        raise ShapeError(f"expected 2D to 5D {what}, got {x.ndim}D input of shape {tuple(x.shape)}")
    axis = cfg.channel_axis % x.ndim
    if x.shape[axis] != cfg.num_features:
        raise ShapeError(
            f"expected {cfg.num_features} features on axis {cfg.channel_axis} of {what}, "
            f"got {x.shape[axis]} (shape {tuple(x.shape)})"
        )
    return channels_view(x, cfg.channel_axis)


def _compute_dtype(xp: ModuleType, dtype: Any) -> Any:
    # float16 is computed in float32, as PyTorch's CPU kernel does with float32 parameters.
    return xp.float64 if dtype == xp.float64 else xp.float32


def _affine(x3: Array, scale: Array, shift: Array, check: bool = False) -> tuple[Array, bool]:
    """y = x * scale + shift per channel, in x's dtype (float16 computes in float32).

    Also says whether every output is finite when ``check`` is set (always computed by the C
    kernels, where a running sum of the outputs costs nothing).
    """
    found = kernels.affine(x3, scale, shift)
    if found is not None:
        return found
    xp = namespace(x3)
    cdt = _compute_dtype(xp, x3.dtype)
    sc, sh = scale.astype(cdt)[:, None], shift.astype(cdt)[:, None]
    y = (x3.astype(cdt, copy=False) * sc + sh).astype(x3.dtype, copy=False)
    if not check:
        return y, True
    with quiet(xp):
        return y, bool(xp.isfinite(y.sum()))


def _scale_shift(state: BNState, mean: Array, var: Array) -> tuple[Array, Array]:
    """scale = weight / sqrt(var + eps), shift = bias - mean * scale, in float64."""
    found = kernels.scale_shift(mean, var, state.config.eps, state.weight, state.bias)
    if found is not None:
        return found
    xp = namespace(mean)
    scale = 1.0 / xp.sqrt(var + state.config.eps)
    if state.weight is not None and state.bias is not None:
        # float64 (scale, mean) with the buffers' float32 promotes to float64: no casts needed
        scale = scale * state.weight
        return scale, state.bias - mean * scale
    return scale, -mean * scale


def affine_params(state: BNState) -> tuple[Array, Array]:
    """Inference-mode ``(scale, shift)`` from the running statistics, float64 (C,)."""
    if state.running_mean is None or state.running_var is None:
        raise StateError(
            "the session does not track running statistics (track_running_stats false)"
        )
    xp = namespace(state.running_mean)
    return _scale_shift(
        state, state.running_mean.astype(xp.float64), state.running_var.astype(xp.float64)
    )


def _reject_nonfinite(x3: Array) -> None:
    """Raise ``NonFiniteError`` naming the channels of x that hold NaN/Inf, if any."""
    xp = namespace(x3)
    bad = ~xp.isfinite(x3).all(axis=(0, 2))
    channels = [int(i) for i in xp.nonzero(bad)[0].tolist()]
    if channels:
        raise NonFiniteError(channels)


def _guard(state: BNState) -> AbstractContextManager[Any]:
    """NaN/Inf flow through the arithmetic only under 'propagate': silence NumPy there."""
    if state.config.nan_policy == "propagate":
        return quiet(namespace(state.population.mean))
    return nullcontext()


def _update_running(state: BNState, batch: Moments) -> BNState:
    """PyTorch's running update: EMA with factor ``momentum`` (or 1/num_batches_tracked) of
    the mean and the unbiased variance M2 / (n - 1), in float64, stored in the buffers' dtype;
    and the batch merged into the population moments. One C call on the CPU, else ``xp``."""
    rm, rv = state.running_mean, state.running_var
    tracking = rm is not None and rv is not None  # None exactly when track_running_stats is off
    tracked = state.num_batches_tracked + int(tracking)
    momentum = state.config.momentum
    f = (1.0 / tracked if momentum is None else momentum) if tracking else 0.0
    found = kernels.update(batch, f, rm, rv, state.population)
    if found is not None:
        rm, rv, count, mean, m2 = found
        population = Moments(count, mean, m2)
    else:
        population = state.population.merge(batch)
        if rm is not None and rv is not None:
            xp = namespace(batch.mean)
            unbiased = batch.m2 / (batch.count - 1)  # count >= 2: batch_moments checked it
            # (1 - f) * buffer in float64 (a Python float times float32 would stay float32)
            new_rm = f * batch.mean + xp.multiply(rm, 1 - f, dtype=xp.float64)
            new_rv = f * unbiased + xp.multiply(rv, 1 - f, dtype=xp.float64)
            rm, rv = new_rm.astype(rm.dtype), new_rv.astype(rv.dtype)
    return replace(
        state, running_mean=rm, running_var=rv, num_batches_tracked=tracked, population=population
    )


def batch_stats(state: BNState, x: Array) -> Moments:
    """The O(N*C) half of a fit: validate ``x`` and compute its per-channel moments.

    Depends only on the configuration (never on the running statistics), so a service can run
    it with no lock held and combine the result with whatever state is current later.
    """
    x3 = check_input(x, state)
    with _guard(state):
        return batch_moments(x3, state.config.nan_policy)


def apply_batch(state: BNState, batch: Moments) -> BNState:
    """The O(C) half of a fit: running statistics, ``num_batches_tracked`` and population
    moments after ``batch`` (from ``batch_stats``). Pure: ``state`` is not changed."""
    with _guard(state):
        return _update_running(state, batch)


def normalize(state: BNState, x: Array, batch: Moments) -> Array:
    """Train-mode output: ``x`` normalized with ``batch``'s (biased) statistics and the
    state's weight, bias and eps. Same shape and dtype as ``x``."""
    x3 = check_input(x, state)
    with _guard(state):
        y = _affine(x3, *_scale_shift(state, batch.mean, batch.m2 / batch.count))[0]
    return y.reshape(x.shape)


def fit(state: BNState, x: Array, *, output: bool = True) -> tuple[BNState, FitResult]:
    """Train-mode forward: normalize ``x`` with its own (biased) statistics and fold the batch
    into the running statistics and the population moments.

    ``batch_stats`` + ``apply_batch`` + ``normalize`` in one call. Raises ``BatchSizeError``
    for one value per channel and ``NonFiniteError`` for NaN/Inf under
    ``nan_policy='reject'``; the given state is never changed.
    """
    batch = batch_stats(state, x)
    y = normalize(state, x, batch) if output else None
    return apply_batch(state, batch), FitResult(y, batch)


def transform(state: BNState, x: Array) -> Array:
    """Inference-mode forward with the running statistics (batch statistics when the session
    does not track them, as PyTorch does). Never changes the state."""
    x3 = check_input(x, state)
    if not state.config.track_running_stats:
        with _guard(state):
            batch = batch_moments(x3, state.config.nan_policy)
            y = _affine(x3, *_scale_shift(state, batch.mean, batch.m2 / batch.count))[0]
        return y.reshape(x.shape)
    reject = state.config.nan_policy == "reject"
    y, finite = _affine(x3, *affine_params(state), check=reject)
    if not finite:  # NaN/Inf input, or an overflow: only the former is an error
        _reject_nonfinite(x3)
    return y.reshape(x.shape)


def backward(
    state: BNState,
    x: Array,
    grad_output: Array,
    *,
    train: bool = True,
    lr: float | None = None,
) -> tuple[BNState, Gradients]:
    """Gradients of BatchNorm at ``x`` for upstream ``grad_output`` (same shape as x).

    Train mode differentiates through the batch statistics (the paper's section 3); eval mode
    uses the running statistics: dL/dx = dL/dy * scale. With ``lr`` an SGD step
    ``weight -= lr * grad_weight`` (and bias) is applied to the returned state.
    """
    x3 = check_input(x, state)
    if grad_output.shape != x.shape:
        raise ShapeError(
            f"grad_output must have the shape of the input {tuple(x.shape)}, "
            f"got {tuple(grad_output.shape)}"
        )
    g3 = check_input(grad_output, state, "grad_output")
    xp = namespace(x3)
    cfg = state.config
    batch_mode = train or not cfg.track_running_stats
    if batch_mode:
        batch = batch_moments(x3, cfg.nan_policy)
        mean, var, n = batch.mean, batch.var, batch.count
    else:
        assert state.running_mean is not None and state.running_var is not None
        mean = state.running_mean.astype(xp.float64)
        var = state.running_var.astype(xp.float64)
    if cfg.nan_policy == "reject":
        _reject_nonfinite(g3)
    with quiet(xp):
        invstd = 1.0 / xp.sqrt(var + cfg.eps)
        g = g3.astype(xp.float64)
        xhat = (x3.astype(xp.float64) - mean[:, None]) * invstd[:, None]
        gb = g.sum(axis=(0, 2))
        gw = xp.einsum("ijk,ijk->j", g, xhat)
        w = state.weight.astype(xp.float64) if state.weight is not None else xp.ones_like(mean)
        if batch_mode:
            k = (w * invstd / n)[:, None]
            gx = k * (n[:, None] * g - gb[:, None] - xhat * gw[:, None])
        else:
            gx = g * (w * invstd)[:, None]
    grads = Gradients(
        gx.astype(x.dtype).reshape(x.shape),
        gw if cfg.affine else None,
        gb if cfg.affine else None,
    )
    if lr is None:
        return state, grads
    if not (lr > 0):
        raise ShapeError(f"lr must be > 0, got {lr}")
    if state.weight is None or state.bias is None:
        raise StateError("an SGD step needs affine weight and bias (affine is false)")
    dt = state.weight.dtype
    stepped = replace(
        state,
        weight=(state.weight.astype(xp.float64) - lr * gw).astype(dt),
        bias=(state.bias.astype(xp.float64) - lr * gb).astype(dt),
    )
    return stepped, grads


def fold(state: BNState, weight: Array, bias: Array | None = None) -> tuple[Array, Array]:
    """Fold the layer (eval mode) into a preceding linear/conv layer with ``weight`` (C, ...)
    and ``bias`` (C,) (zeros when None): W' = W * scale, b' = (b - running_mean) * scale + beta.
    Results keep the dtype of ``weight``."""
    c = state.config.num_features
    xp = namespace(weight)
    if weight.dtype.name not in _FLOATS:
        raise DTypeError(
            f"weight dtype must be one of {', '.join(_FLOATS)}, got {weight.dtype.name}"
        )
    if weight.ndim < 1 or weight.shape[0] != c:
        raise ShapeError(
            f"weight must have {c} output channels on axis 0, got shape {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != (c,):
        raise ShapeError(f"bias must have shape ({c},), got {tuple(bias.shape)}")
    scale, _ = affine_params(state)
    assert state.running_mean is not None
    b = bias.astype(xp.float64) if bias is not None else xp.zeros(c)
    beta = state.bias.astype(xp.float64) if state.bias is not None else xp.zeros(c)
    w_new = weight.astype(xp.float64) * scale.reshape((c,) + (1,) * (weight.ndim - 1))
    b_new = (b - state.running_mean.astype(xp.float64)) * scale + beta
    out_dt = weight.dtype
    return w_new.astype(out_dt), b_new.astype(bias.dtype if bias is not None else out_dt)
