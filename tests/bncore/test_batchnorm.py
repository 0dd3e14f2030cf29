"""Forward/backward/fold behaviour that the golden vectors do not pin: errors and policies."""

from __future__ import annotations

import numpy as np
import pytest

import bncore as bn


def state(c: int = 3, **kw: object) -> bn.BNState:
    return bn.initial_state(bn.BNConfig(c, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (np.zeros((4, 2), np.float32), bn.ShapeError, "expected 3 features on axis 1"),
        (np.zeros((4,), np.float32), bn.ShapeError, "expected 2D to 5D"),
        (np.zeros((2, 3, 1, 1, 1, 1), np.float32), bn.ShapeError, "expected 2D to 5D"),
        (np.zeros((4, 3), np.int64), bn.DTypeError, "dtype must be one of"),
        (np.zeros((1, 3), np.float32), bn.BatchSizeError, "Expected more than 1 value"),
        (np.zeros((1, 3, 1, 1), np.float32), bn.BatchSizeError, "Expected more than 1 value"),
    ],
)
def test_fit_rejects_bad_input_like_pytorch(
    x: np.ndarray, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        bn.fit(state(), x)


def test_one_row_with_spatial_values_is_enough() -> None:
    s, r = bn.fit(state(), np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    assert s.num_batches_tracked == 1
    assert r.output is not None


def test_transform_accepts_a_single_row() -> None:
    y = bn.transform(state(), np.ones((1, 3), np.float32))
    np.testing.assert_allclose(y, np.ones((1, 3)) / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_reject_policy_changes_nothing_and_names_channels() -> None:
    s = state()
    x = np.ones((4, 3), np.float32)
    x[0, 1] = np.nan
    with pytest.raises(bn.NonFiniteError) as info:
        bn.fit(s, x)
    assert info.value.channels == [1]
    with pytest.raises(bn.NonFiniteError):
        bn.transform(s, x)
    assert s.num_batches_tracked == 0


def test_omit_policy_keeps_nan_in_output_and_out_of_the_statistics() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0], [5.0, 6.0]], np.float32)
    s, r = bn.fit(state(2, nan_policy="omit", momentum=1.0), x)
    assert r.output is not None
    assert np.isnan(r.output[0, 1]) and np.isnan(r.output[2, 0])
    np.testing.assert_allclose(s.running_mean, [3.0, 6.0])
    np.testing.assert_allclose(s.running_var, [4.0, 4.0])  # M2 8 over n - 1 = 2
    np.testing.assert_array_equal(s.population.count, [3, 3])


def test_propagate_poisons_the_channel_like_pytorch() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)
    s, _ = bn.fit(state(2, nan_policy="propagate"), x)
    assert np.isnan(s.running_mean[1]) and not np.isnan(s.running_mean[0])


@pytest.mark.parametrize("policy", ["propagate", "omit"])
def test_transform_lets_nan_through_unless_the_policy_rejects(
    policy: str, engine_path: str
) -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)
    y = bn.transform(state(2, nan_policy=policy), x)
    assert np.isnan(y[0, 1]) and np.isfinite(y[[0, 1, 1], [0, 0, 1]]).all()
    with pytest.raises(bn.NonFiniteError):
        bn.transform(state(2), x)


def test_float16_input_gives_float16_output() -> None:
    x = np.random.default_rng(0).normal(0, 1, (8, 3)).astype(np.float16)
    s, r = bn.fit(state(), x)
    assert r.output is not None and r.output.dtype == np.float16
    assert bn.transform(s, x).dtype == np.float16


def test_fit_does_not_mutate_the_given_state() -> None:
    s = state()
    before = bn.state_to_bytes(s)
    bn.fit(s, np.random.default_rng(0).normal(0, 1, (5, 3)).astype(np.float32))
    assert bn.state_to_bytes(s) == before


def test_backward_sgd_step_moves_weight_against_the_gradient() -> None:
    rng = np.random.default_rng(0)
    x, g = rng.normal(0, 1, (6, 3)), rng.normal(0, 1, (6, 3))
    s = state(dtype="float64")
    stepped, grads = bn.backward(s, x, g, lr=0.5)
    np.testing.assert_allclose(stepped.weight, 1.0 - 0.5 * grads.grad_weight)
    np.testing.assert_allclose(stepped.bias, -0.5 * grads.grad_bias)
    assert stepped.num_batches_tracked == 0


def test_backward_without_affine_returns_no_parameter_gradients() -> None:
    x = np.random.default_rng(0).normal(0, 1, (6, 3))
    _, grads = bn.backward(state(affine=False, dtype="float64"), x, x)
    assert grads.grad_weight is None and grads.grad_bias is None
    with pytest.raises(bn.StateError):
        bn.backward(state(affine=False), x, x, lr=0.1)


def test_backward_rejects_mismatched_gradient_shape() -> None:
    with pytest.raises(bn.ShapeError, match="grad_output must have the shape"):
        bn.backward(state(), np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32))


def test_fold_checks_channels_and_needs_running_stats() -> None:
    with pytest.raises(bn.ShapeError, match="3 output channels"):
        bn.fold(state(), np.zeros((2, 5), np.float32))
    with pytest.raises(bn.ShapeError, match="bias must have shape"):
        bn.fold(state(), np.zeros((3, 5), np.float32), np.zeros(2, np.float32))
    with pytest.raises(bn.StateError, match="track_running_stats"):
        bn.fold(state(track_running_stats=False), np.zeros((3, 5), np.float32))


def test_fold_then_linear_equals_linear_then_transform() -> None:
    rng = np.random.default_rng(4)
    s, _ = bn.fit(state(dtype="float64"), rng.normal(2, 3, (10, 3)))
    w, b, x = rng.normal(0, 1, (3, 5)), rng.normal(0, 1, 3), rng.normal(0, 1, (7, 5))
    fw, fb = bn.fold(s, w, b)
    np.testing.assert_allclose(x @ fw.T + fb, bn.transform(s, x @ w.T + b), rtol=1e-12, atol=1e-12)
