"""float32 outputs at float64 quality: (x - mean) * scale + bias with float64 intermediates,
rounded once. x * scale + shift in float32 cancels two large terms (0.07 at mean 1e6)."""

from __future__ import annotations

import numpy as np
import pytest

import bncore as bn

CASES = [(1e6, 1.0), (1e4, 1e-2)]
SHAPES = [(65536, 8), (64, 8, 32, 32)]


def _reference(x: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    """The float64 computation on the same float32 values (channel axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x.astype(np.float64) - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("loc", "std"), CASES)
def test_fit_and_transform_outputs_are_float64_quality(
    engine_path: str, shape: tuple[int, ...], loc: float, std: float
) -> None:
    x = np.random.default_rng(0).normal(loc, std, shape).astype(np.float32)
    axes = (0, *range(2, x.ndim))
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=axes), x64.var(axis=axes)
    eps = 1e-5 * std * std  # unit-scale outputs whatever the spread
    state = bn.initial_state(bn.BNConfig(shape[1], eps=eps, momentum=1.0))
    fitted, result = bn.fit(state, x)
    assert result.output is not None and result.output.dtype == np.float32
    assert np.abs(result.output - _reference(x, mean, var, eps)).max() <= 1e-6
    # momentum 1: the running statistics are this batch's (unbiased variance)
    assert fitted.running_mean is not None and fitted.running_var is not None
    y = bn.transform(fitted, x)
    rm, rv = fitted.running_mean.astype(np.float64), fitted.running_var.astype(np.float64)
    assert np.abs(y - _reference(x, rm, rv, eps)).max() <= 1e-6
    # the split path (what the service runs) gives the same bits as the one-call fit
    batch = bn.batch_stats(state, x)
    np.testing.assert_array_equal(bn.normalize(state, x, batch), result.output)


def test_channels_last_and_float64_are_float64_quality(engine_path: str) -> None:
    x = np.random.default_rng(1).normal(1e6, 1.0, (4096, 3)).astype(np.float32)
    state = bn.initial_state(bn.BNConfig(3, channel_axis=-1))
    _, result = bn.fit(state, x)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    assert result.output is not None
    assert np.abs(result.output - ref).max() <= 1e-6
    state64 = bn.initial_state(bn.BNConfig(3, channel_axis=-1, dtype="float64"))
    _, result64 = bn.fit(state64, x64)
    assert result64.output is not None
    assert np.abs(result64.output - ref).max() <= 1e-9
