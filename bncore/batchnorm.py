"""BatchNorm as pure functions: train and eval forward, backward, fold.

Each takes a ``BNState`` and arrays and returns results (and a new state where the layer
changes); nothing is mutated in place. Shapes: x is (N, C, *S) for ``channel_axis=1`` or
(*S, C) for ``channel_axis=-1``, 2-D to 5-D; statistics are (C,) float64.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bncore import cuda_kernels, kernels
from bncore.backend import Array, namespace
from bncore.errors import DTypeError, NonFiniteError, ShapeError, StateError, ValueRangeError
from bncore.moments import Moments, batch_moments, quiet
from bncore.state import MAX_COUNT, BNState

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
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


@dataclass(frozen=True, init=False)
class FitResult:
    """Train-mode result: the normalized batch (None when not asked for) and the batch's
    moments (biased ``var`` = M2 / count is what normalized it)."""

    output: Array | None
    batch: Moments

    def __init__(self, output: Array | None, batch: Moments) -> None:
        d = self.__dict__  # as Moments: no frozen __init__
        d["output"], d["batch"] = output, batch


@dataclass(frozen=True)
class Gradients:
    """dL/dx (shape and dtype of x) and dL/dweight, dL/dbias ((C,) float64; None without affine)."""

    grad_input: Array
    grad_weight: Array | None
    grad_bias: Array | None


def check_input(x: Array, state: BNState, what: str = "input") -> Array:
    """Validate rank, channel count and dtype like PyTorch; return the (A, C, B) view."""
    return x.reshape(_dims(x, state, what))


def _dims(x: Array, state: BNState, what: str = "input") -> tuple[int, int, int]:
    """``check_input``'s checks; the (A, C, B) that ``channels_view`` would view ``x`` as
    (the C kernels take ``x`` itself with these: no view to build, no output to reshape)."""
    cfg = state.config
    dt, shape = x.dtype, x.shape
    # identity first: NumPy's native float32/float64 dtypes are singletons
    if dt is not _F32 and dt is not _F64 and (dt.char not in _FLOAT_CHARS or dt.kind != "f"):
        raise DTypeError(f"{what} dtype must be one of {', '.join(_FLOATS)}, got {dt.name}")
    if not 2 <= len(shape) <= 5:
        raise ShapeError(f"expected 2D to 5D {what}, got {len(shape)}D input of shape {shape}")
    c = cfg.num_features
    if cfg.channel_axis == 1:  # (N, C, *S): BNConfig allows 1 and -1
        if shape[1] == c:
            b = 1
            for d in shape[2:]:
                b *= d
            return shape[0], c, b
    elif shape[-1] == c:  # (*S, C)
        a = 1
        for d in shape[:-1]:
            a *= d
        return a, c, 1
    raise ShapeError(
        f"expected {c} features on axis {cfg.channel_axis} of {what}, "
        f"got {shape[cfg.channel_axis]} (shape {shape})"
    )


def _affine(
    x3: Array, center: Array, scale: Array, offset: Array, check: bool = False
) -> tuple[Array, bool]:
    """y = (x - center) * scale + offset per channel: float64 per element, rounded once to x's
    dtype. (x * scale + shift with shift = offset - center * scale would cancel two large terms
    at large means: 0.07 absolute error in float32 at mean 1e6.)

    Also says whether every output is finite when ``check`` is set (always computed by the C
    kernels, where a running sum of the outputs costs nothing).
    """
    found = kernels.affine(x3, center, scale, offset)
    if found is None:
        found = cuda_kernels.affine(x3, center, scale, offset, check)
    if found is not None:
        return found
    xp = namespace(x3)
    if x3.size == 0:
        return xp.empty_like(x3), True
    y64 = x3.astype(xp.float64) - center[:, None]
    y64 *= scale[:, None]
    y64 += offset[:, None]
    y = y64.astype(x3.dtype, copy=False)
    if not check:
        return y, True
    with quiet(xp):
        return y, bool(xp.isfinite(y.sum()))


def _params(state: BNState, mean: Array, var: Array) -> tuple[Array, Array, Array]:
    """``(center, scale, offset)``, float64 (C,): y = (x - mean) * weight / sqrt(var + eps) +
    bias."""
    xp = namespace(mean)
    found = kernels.scale_shift(mean, var, state.config.eps, state.weight, None)
    if found is not None:
        scale = found[0]
    else:
        scale = 1.0 / xp.sqrt(var + state.config.eps)
        if state.weight is not None:
            scale = scale * state.weight  # float64 times float32 buffers promotes to float64
    offset = state.bias.astype(xp.float64) if state.bias is not None else xp.zeros_like(mean)
    return mean, scale, offset


def _eval_params(state: BNState) -> tuple[Array, Array, Array]:
    """Inference-mode ``(center, scale, offset)`` from the running statistics, memoized on the
    (immutable) state: a transform then costs one kernel call and no (C,) arithmetic."""
    found = state.derived.get("eval")
    if found is not None:
        return found  # type: ignore[no-any-return]
    if state.running_mean is None or state.running_var is None:
        raise StateError(
            "the session does not track running statistics (track_running_stats false)"
        )
    xp = namespace(state.running_mean)
    params = _params(
        state, state.running_mean.astype(xp.float64), state.running_var.astype(xp.float64)
    )
    state.derived["eval"] = params
    return params


def affine_params(state: BNState) -> tuple[Array, Array]:
    """Inference-mode ``(scale, shift)`` from the running statistics, float64 (C,):
    y = scale * x + shift (the folded form; the engine itself computes (x - mean) * scale +
    bias, which does not cancel at large means)."""
    center, scale, offset = _eval_params(state)
    return scale, offset - center * scale


def _reject_nonfinite(x3: Array) -> None:
    """Raise ``NonFiniteError`` naming the channels of x that hold NaN/Inf, if any."""
    xp = namespace(x3)
    if x3.size == 0:
        return
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
    """The running update of the session's convention: EMA ``w_new * batch + w_old * running``
    (``BNConfig.ema_weights``: torch's momentum or 1/num_batches_tracked as the new batch's
    weight, Keras/ONNX momentum as the old value's) of the mean and of the unbiased (torch) or
    biased (keras, onnx) batch variance, in float64, stored in the buffers' dtype; and the
    batch merged into the population moments. One C call on the CPU, else ``xp``."""
    rm, rv = state.running_mean, state.running_var
    tracking = rm is not None and rv is not None  # None exactly when track_running_stats is off
    tracked = _tracked(state, int(tracking))
    weights = state.config.ema_weights(tracked) if tracking else _UNTRACKED
    found = kernels.update(batch, weights, rm, rv, state.population)
    if found is None:
        found = cuda_kernels.update(batch, weights, rm, rv, state.population)
    if found is not None:
        rm, rv, count, mean, m2 = found
        return _next_state(state, rm, rv, tracked, Moments(count, mean, m2))
    with _guard(state):
        population = state.population.merge(batch)
        if rm is not None and rv is not None:
            xp = namespace(batch.mean)
            w_new, w_old, biased = weights
            # count >= 2: batch_moments checked it
            v = batch.m2 / batch.count if biased else batch.m2 / (batch.count - 1)
            # w_old * buffer in float64 (a Python float times float32 would stay float32)
            new_rm = w_new * batch.mean + xp.multiply(rm, w_old, dtype=xp.float64)
            new_rv = w_new * v + xp.multiply(rv, w_old, dtype=xp.float64)
            rm, rv = new_rm.astype(rm.dtype), new_rv.astype(rv.dtype)
    return _next_state(state, rm, rv, tracked, population)


# ema_weights's answer when the running statistics are not tracked (nothing to weigh).
_UNTRACKED = (0.0, 1.0, False)


def _tracked(state: BNState, step: int) -> int:
    """num_batches_tracked after this fit; it stays an int64 (every format writes one)."""
    tracked = state.num_batches_tracked + step
    if tracked >= MAX_COUNT:
        raise ValueRangeError("num_batches_tracked would exceed 2**63 - 1: reset the session")
    return tracked


def _next_state(
    state: BNState, rm: Array | None, rv: Array | None, tracked: int, population: Moments
) -> BNState:
    return BNState(state.config, state.weight, state.bias, rm, rv, tracked, population)


def batch_stats(state: BNState, x: Array) -> Moments:
    """The O(N*C) half of a fit: validate ``x`` and compute its per-channel moments.

    Depends only on the configuration (never on the running statistics), so a service can run
    it with no lock held and combine the result with whatever state is current later.
    """
    dims = _dims(x, state)
    policy = state.config.nan_policy
    if policy != "omit" and dims[0] * dims[2] >= 2:  # else batch_moments counts or names it
        found = kernels.stats(x, dims)  # x itself: no (A, C, B) view to build
        if found is not None:
            count, mean, m2, finite = found
            if not finite and policy == "reject":
                raise NonFiniteError(_nonfinite(mean, m2))
            return Moments(count, mean, m2)
    # No _guard: batch_moments silences NumPy itself where its fallback meets NaN/Inf.
    return batch_moments(x.reshape(dims), policy)


def apply_batch(state: BNState, batch: Moments) -> BNState:
    """The O(C) half of a fit: running statistics, ``num_batches_tracked`` and population
    moments after ``batch`` (from ``batch_stats``). Pure: ``state`` is not changed."""
    return _update_running(state, batch)


def normalize(state: BNState, x: Array, batch: Moments) -> Array:
    """Train-mode output: ``x`` normalized with ``batch``'s (biased) statistics and the
    state's weight, bias and eps. Same shape and dtype as ``x``."""
    dims = _dims(x, state)
    y = kernels.normalize(x, dims, batch, state.config.eps, state.weight, state.bias)
    if y is not None:
        return y
    x3 = x.reshape(dims)
    with _guard(state):
        y = _affine(x3, *_params(state, batch.mean, batch.m2 / batch.count))[0]
    return y.reshape(x.shape)


def _nonfinite(mean: Array, m2: Array) -> list[int]:
    xp = namespace(mean)
    return [int(i) for i in xp.nonzero(~(xp.isfinite(mean) & xp.isfinite(m2)))[0].tolist()]


def fit(state: BNState, x: Array, *, output: bool = True) -> tuple[BNState, FitResult]:
    """Train-mode forward: normalize ``x`` with its own (biased) statistics and fold the batch
    into the running statistics and the population moments.

    ``batch_stats`` + ``apply_batch`` + ``normalize`` in one call. Raises ``BatchSizeError``
    for one value per channel and ``NonFiniteError`` for NaN/Inf under
    ``nan_policy='reject'``; the given state is never changed.
    """
    dims = _dims(x, state)
    cfg = state.config
    # One C call for the whole step where it applies (not under 'omit', whose counts differ
    # per channel; not for one value per channel, where batch_moments names the error): the
    # formulas of batch_stats + normalize + apply_batch, without their per-call Python cost.
    if dims[0] * dims[2] >= 2 and cfg.nan_policy != "omit":
        rm, rv = state.running_mean, state.running_var
        if rm is not None:
            tracked = state.num_batches_tracked + 1
            if tracked >= MAX_COUNT:
                _tracked(state, 1)  # raises
            weights = cfg.ema_weights(tracked)
        else:
            tracked, weights = state.num_batches_tracked, _UNTRACKED
        found = kernels.fit_step(
            x, dims, cfg.eps, weights, state.weight, state.bias, rm, rv, state.population, output
        )
        if found is not None:
            y, block, rm, rv, finite = found
            if not finite and cfg.nan_policy == "reject":
                raise NonFiniteError(_nonfinite(block[1], block[2]))
            # rows by index: cheaper than unpacking the block (numpy's iterator)
            new = _next_state(state, rm, rv, tracked, Moments(block[3], block[4], block[5]))
            return new, FitResult(y, Moments(block[0], block[1], block[2]))
    batch = batch_stats(state, x)
    y = normalize(state, x, batch) if output else None
    return apply_batch(state, batch), FitResult(y, batch)


def transform(state: BNState, x: Array) -> Array:
    """Inference-mode forward with the running statistics (batch statistics when the session
    does not track them, as PyTorch does). Never changes the state."""
    dims = _dims(x, state)
    if dims[0] * dims[2] == 0:  # nothing to normalize (and no batch statistics to need)
        return namespace(x).empty_like(x)  # type: ignore[no-any-return]
    if not state.config.track_running_stats:
        x3 = x.reshape(dims)
        with _guard(state):
            batch = batch_moments(x3, state.config.nan_policy)
            y = _affine(x3, *_params(state, batch.mean, batch.m2 / batch.count))[0]
        return y.reshape(x.shape)
    reject = state.config.nan_policy == "reject"
    params = _eval_params(state)
    found = kernels.affine(x, *params, dims=dims)  # y shaped like x: nothing to reshape
    if found is None:
        y3, finite = _affine(x.reshape(dims), *params, check=reject)
        found = y3.reshape(x.shape), finite
    y, finite = found
    if not finite and reject:  # NaN/Inf input, or an overflow: only the former is an error
        _reject_nonfinite(x.reshape(dims))
    return y


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
    uses the running statistics: dL/dx = dL/dy * scale. With ``lr`` (finite, > 0) an SGD step
    ``weight -= lr * grad_weight`` (and bias) is applied to the returned state; a step that
    would make a weight or bias non-finite raises ``ValueRangeError``. ``nan_policy='reject'``
    applies to x and grad_output in both modes.
    """
    if lr is not None and not (
        isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    ):
        raise ValueRangeError(f"lr must be a finite number > 0, got {lr!r}")
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
        if cfg.nan_policy == "reject":
            _reject_nonfinite(x3)
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
    if state.weight is None or state.bias is None:
        raise StateError("an SGD step needs affine weight and bias (affine is false)")
    dt = state.weight.dtype
    with quiet(xp):
        weight = (state.weight.astype(xp.float64) - lr * gw).astype(dt)
        bias = (state.bias.astype(xp.float64) - lr * gb).astype(dt)
    if not bool(xp.isfinite(weight).all() & xp.isfinite(bias).all()):
        raise ValueRangeError(
            f"the SGD step with lr={lr} would make weight or bias non-finite "
            "(NaN/Inf gradients, or an overflow): nothing was changed"
        )
    return replace(state, weight=weight, bias=bias), grads


def fold(
    state: BNState,
    weight: Array,
    bias: Array | None = None,
    *,
    transposed: bool = False,
    groups: int = 1,
) -> tuple[Array, Array]:
    """Fold the layer (eval mode) into the preceding linear/conv layer ``weight``, ``bias``
    ((C,), zeros when None): W' = W * scale per output channel, b' = (b - running_mean) *
    scale + beta, as ``torch.nn.utils.fusion.fuse_conv_bn_weights``.

    The output channels are axis 0 for Linear (out, in) and Conv (out, in/groups, ...); for
    ConvTranspose (``transposed=True``) the weight is (in, out/groups, ...) and output channel
    ``g * (out/groups) + k`` is column k of group g's rows. Float inputs keep their dtype;
    integer inputs give the session's dtype.
    """
    c = state.config.num_features
    xp = namespace(weight)
    for name, arr in (("weight", weight), ("bias", bias)):
        if arr is not None and arr.dtype.kind not in "fiu":
            raise DTypeError(f"{name} dtype must be a float or integer type, got {arr.dtype.name}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueRangeError(f"groups must be an integer >= 1, got {groups!r}")
    if bias is not None and bias.shape != (c,):
        raise ShapeError(f"bias must have shape ({c},), got {tuple(bias.shape)}")
    if transposed:
        if weight.ndim < 2 or weight.shape[1] * groups != c or weight.shape[0] % groups:
            raise ShapeError(
                f"a transposed weight is (in, out/groups, ...) with out = {c} and {groups} "
                f"group(s); got shape {tuple(weight.shape)}"
            )
    elif groups != 1:
        raise ValueRangeError("groups only applies to transposed weights (Conv's axis 0 is out)")
    elif weight.ndim < 1 or weight.shape[0] != c:
        raise ShapeError(
            f"weight must have {c} output channels on axis 0, got shape {tuple(weight.shape)}"
        )
    scale, _ = affine_params(state)
    assert state.running_mean is not None
    out_dt = weight.dtype if weight.dtype.kind == "f" else xp.dtype(state.config.dtype)
    b_dt = bias.dtype if bias is not None and bias.dtype.kind == "f" else out_dt
    b = bias.astype(xp.float64) if bias is not None else xp.zeros(c)
    beta = state.bias.astype(xp.float64) if state.bias is not None else xp.zeros(c)
    w64 = weight.astype(xp.float64)
    rest = (1,) * (weight.ndim - 2)
    if transposed:
        per = c // groups
        shaped = w64.reshape((groups, weight.shape[0] // groups, per, *weight.shape[2:]))
        w_new = (shaped * scale.reshape((groups, 1, per, *rest))).reshape(weight.shape)
    else:
        w_new = w64 * scale.reshape((c,) + (1,) * (weight.ndim - 1))
    b_new = (b - state.running_mean.astype(xp.float64)) * scale + beta
    return w_new.astype(out_dt), b_new.astype(b_dt)
