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


def test_stats_match_the_moments_kernel_and_count_every_value() -> None:
    x = np.random.default_rng(6).normal(5, 2, (64, 7, 9)).astype(np.float32)
    found, reference = kernels.stats(x), kernels.moments(x)
    assert found is not None and reference is not None
    count, mean, m2, finite = found
    np.testing.assert_array_equal(count, np.full(7, 64.0 * 9))
    np.testing.assert_array_equal(mean, reference[0])
    np.testing.assert_array_equal(m2, reference[1])
    assert finite is True


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("affine", [True, False])
def test_normalize_is_the_affine_kernel_with_the_numpy_factors(dtype: str, affine: bool) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(3, 2, (40, 6, 5)).astype(dtype)
    batch = bn.Moments(np.full(6, 200.0), rng.normal(3, 1, 6), rng.uniform(100, 900, 6))
    w = rng.uniform(0.5, 2, 6).astype(dtype) if affine else None
    b = rng.normal(0, 1, 6).astype(dtype) if affine else None
    y = kernels.normalize(x, x.shape, batch, 1e-3, w, b)
    assert y is not None
    scale = 1.0 / np.sqrt(batch.m2 / batch.count + 1e-3) * (w if w is not None else 1.0)
    offset = b.astype(np.float64) if b is not None else np.zeros(6)
    expected = kernels.affine(x, batch.mean, scale, offset)
    assert expected is not None
    np.testing.assert_array_equal(y, expected[0])


def test_fit_step_equals_stats_normalize_and_update() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(2, 3, (33, 5)).astype(np.float32)
    w, b = rng.uniform(0.5, 2, 5).astype(np.float32), rng.normal(0, 1, 5).astype(np.float32)
    rm, rv = rng.normal(0, 1, 5).astype(np.float32), rng.uniform(1, 2, 5).astype(np.float32)
    pop = bn.Moments(np.full(5, 10.0), rng.normal(0, 1, 5), rng.uniform(1, 9, 5))
    x3 = x.reshape(33, 5, 1)
    found = kernels.fit_step(x, (33, 5, 1), 1e-5, (0.1, 0.9, False), w, b, rm, rv, pop, True)
    stats = kernels.stats(x3)
    assert found is not None and stats is not None
    y, block, new_rm, new_rv, finite = found
    batch = bn.Moments(*stats[:3])
    np.testing.assert_array_equal(block[:3], np.stack(stats[:3]))
    expected_y = kernels.normalize(x, (33, 5, 1), batch, 1e-5, w, b)
    assert y is not None and expected_y is not None
    np.testing.assert_array_equal(y, expected_y)
    updated = kernels.update(batch, (0.1, 0.9, False), rm, rv, pop)
    assert updated is not None
    np.testing.assert_array_equal(new_rm, updated[0])
    np.testing.assert_array_equal(new_rv, updated[1])
    np.testing.assert_array_equal(block[3:], np.stack(updated[2:]))
    assert finite is True


def test_drift_matches_the_numpy_formula() -> None:
    rng = np.random.default_rng(9)
    batch = bn.Moments(np.full(50, 20.0), rng.normal(0, 2, 50), rng.uniform(1, 60, 50))
    rm, rv = rng.normal(0, 1, 50).astype(np.float32), rng.uniform(0.5, 3, 50).astype(np.float32)
    found = kernels.drift(batch, rm, rv, 1e-5)
    assert found is not None
    vb, vr = batch.m2 / batch.count + 1e-5, rv.astype(np.float64) + 1e-5
    d = batch.mean - rm.astype(np.float64)
    np.testing.assert_array_equal(found[0], d / np.sqrt(vr))
    # C's log is glibc's, NumPy's a SIMD one: they may differ in the last bit
    np.testing.assert_allclose(found[1], np.log(vb / vr), rtol=4e-16, atol=0)
    np.testing.assert_allclose(
        found[2], 0.5 * (np.log(vr / vb) + (vb + d * d) / vr - 1.0), rtol=1e-15, atol=1e-16
    )


@pytest.mark.parametrize("c", [1, 5, 8, 63, 129, 1000])
@pytest.mark.parametrize("top", [0, 1, 5, 2000])
def test_drift_summary_has_numpy_bits(c: int, top: int) -> None:
    rng = np.random.default_rng(c)
    kl = rng.exponential(1.0, c).round(1)  # rounded: ties, which the stable order keeps
    shift, ratio = rng.normal(0, 1, c), rng.normal(0, 1, c)
    if c > 5:
        kl[[1, 4]] = np.nan, np.inf
    found = kernels.drift_summary(kl, shift, ratio, top)
    assert found is not None
    max_kl, mean_kl, max_shift, max_ratio, channels = found
    with np.errstate(invalid="ignore"):
        expected_max, expected_mean = float(kl.max()), float(kl.mean())
    assert repr(max_kl) == repr(expected_max) and repr(mean_kl) == repr(expected_mean)
    assert max_shift == float(abs(shift).max()) and max_ratio == float(abs(ratio).max())
    assert channels == [int(i) for i in (-kl).argsort(kind="stable")[:top]]


def test_the_c_side_refuses_what_it_does_not_take() -> None:
    batch = bn.Moments(np.full(3, 4.0), np.zeros(3), np.ones(3))
    f16 = np.ones((4, 3), np.float16)
    assert (
        kernels.fit_step(f16, (4, 3, 1), 1e-5, (0.1, 0.9, False), *[None] * 4, batch, True) is None
    )
    assert kernels.normalize(f16, (4, 3, 1), batch, 1e-5, None, None) is None
    assert kernels.stats(f16.reshape(4, 3, 1)) is None
    short = bn.Moments(np.full(2, 4.0), np.zeros(2), np.ones(2))
    assert kernels.drift(short, np.zeros(3), np.ones(3), 1e-5) is None
    assert kernels.drift_summary(np.ones(3), np.ones(3), np.ones(3), -1) is None
