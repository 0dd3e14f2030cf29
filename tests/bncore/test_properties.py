"""Property tests (hypothesis): invariants that hold for every input, not just golden ones."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import bncore as bn


@st.composite
def batches(draw: st.DrawFn, min_rows: int = 2) -> np.ndarray[Any, Any]:
    c = draw(st.integers(1, 6))
    ndim = draw(st.integers(2, 4))
    shape = (
        draw(st.integers(min_rows, 12)),
        c,
        *(draw(st.integers(1, 4)) for _ in range(ndim - 2)),
    )
    values = st.floats(-1e3, 1e3, allow_nan=False, width=64)
    return draw(arrays(np.float64, shape, elements=values))


def config_for(x: np.ndarray[Any, Any], **kw: Any) -> bn.BNConfig:
    return bn.BNConfig(x.shape[1], dtype="float64", **kw)


@given(batches())
def test_train_output_has_zero_mean_and_variance_v_over_v_plus_eps(x: np.ndarray[Any, Any]) -> None:
    _, result = bn.fit(bn.initial_state(config_for(x)), x)
    y = bn.channels_view(result.output, 1)
    v = bn.channels_view(x, 1).var(axis=(0, 2))
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=(0, 2)), v / (v + 1e-5), rtol=1e-7, atol=1e-9)


@given(batches(), batches())
def test_transform_never_changes_state(
    fit_x: np.ndarray[Any, Any], x: np.ndarray[Any, Any]
) -> None:
    if fit_x.shape[1] != x.shape[1]:
        x = x[:, :1].repeat(fit_x.shape[1], axis=1)
    state, _ = bn.fit(bn.initial_state(config_for(fit_x)), fit_x)
    before = bn.state_to_bytes(state)
    bn.transform(state, x)
    assert bn.state_to_bytes(state) == before


@given(st.lists(batches(), min_size=2, max_size=5), st.randoms())
def test_population_merge_is_order_independent(parts: list[np.ndarray[Any, Any]], rnd: Any) -> None:
    c = parts[0].shape[1]
    parts = [p[:, :1].repeat(c, axis=1) if p.shape[1] != c else p for p in parts]
    moments = [bn.batch_moments(bn.channels_view(p, 1)) for p in parts]
    forward = moments[0]
    for m in moments[1:]:
        forward = forward.merge(m)
    shuffled = list(moments)
    rnd.shuffle(shuffled)
    other = shuffled[0]
    for m in shuffled[1:]:
        other = other.merge(m)
    np.testing.assert_array_equal(forward.count, other.count)
    np.testing.assert_allclose(forward.mean, other.mean, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(forward.m2, other.m2, rtol=1e-10, atol=1e-6)


@given(st.lists(batches(), min_size=1, max_size=4))
def test_momentum_one_makes_running_mean_the_last_batch_mean(
    parts: list[np.ndarray[Any, Any]],
) -> None:
    c = parts[0].shape[1]
    state = bn.initial_state(config_for(parts[0], momentum=1.0))
    for p in parts:
        p = p[:, :1].repeat(c, axis=1) if p.shape[1] != c else p
        state, _ = bn.fit(state, p, output=False)
    last = bn.channels_view(p, 1)
    np.testing.assert_allclose(state.running_mean, last.mean(axis=(0, 2)), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(
        state.running_var, last.var(axis=(0, 2), ddof=1), rtol=1e-9, atol=1e-9
    )


@given(batches())
def test_nchw_and_nhwc_give_identical_statistics(x: np.ndarray[Any, Any]) -> None:
    channels_last = np.moveaxis(x, 1, -1).copy()
    a, _ = bn.fit(bn.initial_state(config_for(x)), x)
    b, _ = bn.fit(bn.initial_state(config_for(x, channel_axis=-1)), channels_last)
    np.testing.assert_allclose(a.running_mean, b.running_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.running_var, b.running_var, rtol=1e-12, atol=1e-12)
