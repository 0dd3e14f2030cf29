"""The C kernels against float64 recomputation, and where they step aside."""

from __future__ import annotations

import numpy as np
import pytest

import bncore as bn
from bncore import kernels


def truth(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64 = x3.astype(np.float64)
    mean = x64.mean(axis=(0, 2))
    return mean, ((x64 - mean[:, None]) ** 2).sum(axis=(0, 2))


def test_kernels_are_built() -> None:
    assert kernels.available(), "bncore._cpu missing: reinstall with a C compiler"


@pytest.mark.parametrize(
    "shape", [(2, 3), (256, 64), (3000, 700), (4, 64, 3136), (2_000_000, 2, 1)]
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_moments_match_float64_two_pass(shape: tuple[int, int], dtype: str) -> None:
    x = np.random.default_rng(0).normal(7, 3, shape).astype(dtype)
    x3 = x.reshape(shape[0], shape[1], -1)
    found = kernels.moments(x3)
    assert found is not None
    mean, m2 = truth(x3)
    np.testing.assert_allclose(found[0], mean, rtol=1e-12)
    np.testing.assert_allclose(found[1], m2, rtol=1e-10)
    assert found[2] is True


@pytest.mark.parametrize("shape", [(50, 3), (3_000_000, 3)])
def test_moments_flag_non_finite_channels(shape: tuple[int, int]) -> None:
    x = np.ones(shape, np.float32)
    x[-1, 1] = np.inf
    found = kernels.moments(x.reshape(*shape, 1))
    assert found is not None
    assert found[2] is False
    assert not np.isfinite(found[1][1]) and np.isfinite(found[1][0])


def test_large_mean_small_spread_float32_is_exact_to_1e_6() -> None:
    x = (1e4 + 1e-2 * np.random.default_rng(1).standard_normal((65536, 8))).astype(np.float32)
    found = kernels.moments(x.reshape(65536, 8, 1))
    assert found is not None
    np.testing.assert_allclose(found[1] / 65536, x.astype(np.float64).var(axis=0), rtol=1e-9)


@pytest.mark.parametrize("shape", [(5, 3, 1), (3000, 700, 1), (40, 64, 3136)])
def test_affine_matches_numpy_bit_for_bit(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, shape).astype(np.float32)
    center, scale, offset = (rng.normal(0, 1, shape[1]) for _ in range(3))
    found = kernels.affine(x, center, scale, offset)
    assert found is not None
    y, finite = found
    # float64 per element, rounded once (the streaming AVX2 path included: (40, 64, 3136))
    expected = (x - center[:, None]) * scale[:, None] + offset[:, None]
    np.testing.assert_array_equal(y, expected.astype(np.float32))
    assert finite


def test_affine_reports_non_finite_output() -> None:
    x = np.ones((4, 3, 1), np.float32)
    x[2, 1, 0] = np.nan
    found = kernels.affine(x, np.zeros(3), np.ones(3), np.zeros(3))
    assert found is not None
    assert found[1] is False


@pytest.mark.parametrize(
    "x3",
    [
        np.ones((4, 3, 1), np.float16),
        np.ones((3, 4), np.float32).T.reshape(4, 3, 1),
        np.ones((4, 3, 1), ">f4"),
    ],
)
def test_kernels_step_aside_for_what_they_do_not_take(x3: np.ndarray) -> None:
    assert kernels.moments(x3) is None
    assert kernels.affine(x3, np.zeros(3), np.ones(3), np.zeros(3)) is None


def test_engine_falls_back_to_numpy_for_non_contiguous_input() -> None:
    x = np.random.default_rng(3).normal(0, 1, (3, 8)).astype(np.float32).T  # (8, 3), F-order
    state, result = bn.fit(bn.initial_state(bn.BNConfig(3)), x)
    np.testing.assert_allclose(result.batch.mean, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    assert state.num_batches_tracked == 1


def test_kernel_argument_errors_are_python_exceptions() -> None:
    from bncore import _cpu

    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="buffer size"):
        _cpu.moments(x, 4, 4, 1, 0, 4, np.empty(4), np.empty(4))
    with pytest.raises(ValueError, match="row range"):
        _cpu.moments(x, 4, 3, 1, 0, 5, np.empty(3), np.empty(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        _cpu.moments(np.ones((4, 3), np.int32), 4, 3, 1, 0, 4, np.empty(3), np.empty(3))
    with pytest.raises(ValueError, match="float64 values"):
        _cpu.moments(x, 4, 3, 1, 0, 4, np.empty(2), np.empty(3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("affine", [True, False])
def test_scale_shift_matches_the_numpy_formula(dtype: str, affine: bool) -> None:
    rng = np.random.default_rng(4)
    mean, var = rng.normal(0, 3, 7), rng.uniform(0, 2, 7)
    w = rng.uniform(0.5, 2, 7).astype(dtype) if affine else None
    b = rng.normal(0, 1, 7).astype(dtype) if affine else None
    found = kernels.scale_shift(mean, var, 1e-3, w, b)
    assert found is not None
    scale = 1.0 / np.sqrt(var + 1e-3) * (w if w is not None else 1.0)
    np.testing.assert_array_equal(found[0], scale)
    np.testing.assert_array_equal(found[1], (b if b is not None else 0.0) - mean * scale)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tracked", [True, False])
@pytest.mark.parametrize("biased", [False, True])
def test_update_matches_the_numpy_ema_and_chan_merge(
    dtype: str, tracked: bool, biased: bool
) -> None:
    rng = np.random.default_rng(5)
    batch = bn.Moments(np.full(6, 10.0), rng.normal(0, 1, 6), rng.uniform(1, 5, 6))
    population = bn.Moments(
        rng.uniform(0, 50, 6).round(), rng.normal(0, 1, 6), rng.uniform(0, 9, 6)
    )
    rm = rng.normal(0, 1, 6).astype(dtype) if tracked else None
    rv = rng.uniform(0.5, 2, 6).astype(dtype) if tracked else None
    found = kernels.update(batch, (0.3, 0.7, biased), rm, rv, population)
    assert found is not None
    new_rm, new_rv, count, mean, m2 = found
    merged = population.merge(batch)
    np.testing.assert_array_equal(count, merged.count)
    np.testing.assert_array_equal(mean, merged.mean)
    np.testing.assert_array_equal(m2, merged.m2)
    if rm is None or rv is None:
        assert new_rm is None and new_rv is None
        return
    assert new_rm.dtype == np.dtype(dtype)
    expected_rm = 0.3 * batch.mean + rm.astype(np.float64) * 0.7
    expected_rv = 0.3 * batch.m2 / (10 if biased else 9) + rv.astype(np.float64) * 0.7
    np.testing.assert_array_equal(new_rm, expected_rm.astype(dtype))
    np.testing.assert_array_equal(new_rv, expected_rv.astype(dtype))


@pytest.mark.parametrize("shape", [(4096, 256, 1), (16, 8, 8192)])
def test_threaded_kernels_agree_with_one_thread(shape: tuple[int, int, int]) -> None:
    from bncore import _cpu

    rng = np.random.default_rng(9)
    x = rng.normal(1e3, 2.0, shape).astype(np.float32)
    a, c, b = shape
    m1, s1, m2, s2 = (np.empty(c) for _ in range(4))
    assert _cpu.moments(x, a, c, b, 0, a, m1, s1)
    assert _cpu.moments_mt(x, a, c, b, 3, m2, s2)
    np.testing.assert_allclose(m2, m1, rtol=1e-13)
    np.testing.assert_allclose(s2, s1, rtol=1e-10)
    center, scale, offset = m1, 1 / np.sqrt(s1 / (a * b)), rng.normal(0, 1, c)
    y1, y2 = np.empty_like(x), np.empty_like(x)
    assert _cpu.affine(x, a, c, b, 0, a, center, scale, offset, y1)
    assert _cpu.affine_mt(x, a, c, b, 3, center, scale, offset, y2)
    np.testing.assert_array_equal(y1, y2)
