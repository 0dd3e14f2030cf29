"""Batch and population moments: float64 truth, Chan's merge, both CPU paths."""

from __future__ import annotations

import numpy as np
import pytest

import bncore as bn
from bncore.moments import Moments

# Every test here runs through the C kernels and through the NumPy fallback.
pytestmark = pytest.mark.usefixtures("engine_path")


def truth(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64 = bn.channels_view(x, 1).astype(np.float64)
    mean = x64.mean(axis=(0, 2))
    return mean, ((x64 - mean[:, None]) ** 2).sum(axis=(0, 2))


@pytest.mark.parametrize(
    "shape", [(7, 3), (300_000, 3), (2, 5, 70_000), (5000, 64), (3, 40, 3000), (700, 7, 5, 5)]
)
def test_blocked_moments_match_float64_two_pass(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(1).normal(5.0, 3.0, shape).astype(np.float32)
    m = bn.batch_moments(bn.channels_view(x, 1))
    mean, m2 = truth(x)
    np.testing.assert_allclose(m.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(m.m2, m2, rtol=1e-10)
    assert (m.count == x.size // x.shape[1]).all()


def test_hand_derived_small_case() -> None:
    x = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [6.0, 10.0]])
    m = bn.batch_moments(bn.channels_view(x, 1))
    np.testing.assert_array_equal(m.mean, [3.0, 10.0])
    np.testing.assert_array_equal(m.m2, [14.0, 0.0])  # (4 + 1 + 0 + 9), constant channel
    np.testing.assert_array_equal(m.var, [3.5, 0.0])


def test_fitting_a_then_b_equals_fitting_apart_and_merging() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(1e3, 1, (100, 4)), rng.normal(-2, 50, (37, 4))
    config = bn.BNConfig(4, dtype="float64")
    seq, _ = bn.fit(bn.initial_state(config), a, output=False)
    seq, _ = bn.fit(seq, b, output=False)
    sa, _ = bn.fit(bn.initial_state(config), a, output=False)
    sb, _ = bn.fit(bn.initial_state(config), b, output=False)
    merged = sa.population.merge(sb.population)
    both = np.concatenate([a, b])
    np.testing.assert_allclose(seq.population.mean, both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.var, both.var(0), rtol=1e-12)
    np.testing.assert_allclose(seq.population.var, merged.var, rtol=1e-12)


def test_merge_with_empty_moments_is_identity() -> None:
    m = bn.batch_moments(bn.channels_view(np.arange(12.0).reshape(4, 3), 1))
    empty = Moments.zeros(3, np)
    for merged in (empty.merge(m), m.merge(empty)):
        np.testing.assert_array_equal(merged.mean, m.mean)
        np.testing.assert_array_equal(merged.m2, m.m2)
    assert np.isnan(empty.merge(empty).var).all()


def test_omit_ignores_nan_per_channel() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0], [5.0, 6.0]])
    m = bn.batch_moments(bn.channels_view(x, 1), "omit")
    np.testing.assert_array_equal(m.count, [3, 3])
    np.testing.assert_allclose(m.mean, [3.0, 6.0])
    np.testing.assert_allclose(m.m2, [8.0, 8.0])


def test_omit_still_rejects_inf() -> None:
    x = np.array([[1.0, np.inf], [3.0, 4.0], [2.0, 8.0]])
    with pytest.raises(bn.NonFiniteError) as info:
        bn.batch_moments(bn.channels_view(x, 1), "omit")
    assert info.value.channels == [1]


def test_omit_with_one_value_left_in_a_channel_is_a_batch_size_error() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [2.0, np.nan]])
    with pytest.raises(bn.BatchSizeError, match=r"channel\(s\) \[1\]"):
        bn.batch_moments(bn.channels_view(x, 1), "omit")


@pytest.mark.parametrize("size", [(4, 3), (200_000, 3)])
def test_reject_names_the_nonfinite_channels(size: tuple[int, int]) -> None:
    x = np.ones(size, np.float32)
    x[1, 0] = np.nan
    x[-1, 2] = -np.inf
    with pytest.raises(bn.NonFiniteError) as info:
        bn.batch_moments(bn.channels_view(x, 1), "reject")
    assert info.value.channels == [0, 2]
    assert "channel(s) 0, 2" in str(info.value)


def test_huge_float32_values_fall_back_to_float64_instead_of_overflowing() -> None:
    x = np.array([[3e37], [-3e37], [1e37]], np.float32)
    m = bn.batch_moments(bn.channels_view(x, 1), "reject")
    mean, m2 = truth(x)
    np.testing.assert_allclose(m.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(m.m2, m2, rtol=1e-12)
