"""Config validation, initial state, and the binary state record."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import bncore as bn


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("eps", 0.0, "eps must be"),
        ("eps", -1e-5, "eps must be"),
        ("eps", float("nan"), "eps must be"),
        ("momentum", 0.0, "momentum must be"),
        ("momentum", 1.5, "momentum must be"),
        ("channel_axis", 2, "channel_axis must be"),
        ("dtype", "int8", "dtype must be"),
        ("nan_policy", "ignore", "nan_policy must be"),
        ("num_features", 0, "num_features must be"),
        ("num_features", True, "num_features must be"),
    ],
)
def test_invalid_config_names_the_value(field: str, value: Any, message: str) -> None:
    kw: dict[str, Any] = {"num_features": 4, field: value}
    with pytest.raises(bn.ConfigError, match=message):
        bn.BNConfig(**kw)


def test_initial_state_follows_pytorch_defaults() -> None:
    s = bn.initial_state(bn.BNConfig(3))
    np.testing.assert_array_equal(s.running_mean, [0, 0, 0])
    np.testing.assert_array_equal(s.running_var, [1, 1, 1])
    np.testing.assert_array_equal(s.weight, [1, 1, 1])
    np.testing.assert_array_equal(s.bias, [0, 0, 0])
    assert s.num_batches_tracked == 0
    assert s.running_mean.dtype == np.float32


def test_buffers_follow_affine_and_tracking_like_a_state_dict() -> None:
    assert set(bn.initial_state(bn.BNConfig(2, affine=False)).buffers()) == {
        "running_mean",
        "running_var",
    }
    assert set(bn.initial_state(bn.BNConfig(2, track_running_stats=False)).buffers()) == {
        "weight",
        "bias",
    }


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"weight": [1.0, 2.0]}, bn.ShapeError),
        ({"bias": [[0.0, 0.0, 0.0]]}, bn.ShapeError),
        ({"weight": [1.0, float("nan"), 1.0]}, bn.NonFiniteError),
        ({"running_var": [1.0, -1.0, 1.0]}, bn.ValueRangeError),
        ({"weight": ["a", "b", "c"]}, bn.ShapeError),
    ],
)
def test_initial_values_are_validated(kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        bn.initial_state(bn.BNConfig(3), **kw)


def test_affine_values_without_affine_are_rejected() -> None:
    with pytest.raises(bn.ConfigError, match="weight given"):
        bn.initial_state(bn.BNConfig(3, affine=False), weight=[1.0, 1.0, 1.0])


def test_state_bytes_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    state = bn.initial_state(
        bn.BNConfig(5, momentum=None, dtype="float64"), weight=rng.uniform(1, 2, 5)
    )
    for _ in range(3):
        state, _ = bn.fit(state, rng.normal(0, 1, (9, 5)))
    data = bn.state_to_bytes(state)
    back = bn.state_from_bytes(data)
    assert back.config == state.config
    assert back.num_batches_tracked == 3
    for name, value in state.buffers().items():
        np.testing.assert_array_equal(back.buffers()[name], value)
    np.testing.assert_array_equal(back.population.m2, state.population.m2)
    assert bn.state_to_bytes(back) == data


def test_state_record_is_compact() -> None:
    data = bn.state_to_bytes(bn.initial_state(bn.BNConfig(1024)))
    # 4 float32 buffers + 3 float64 population vectors, plus a small header
    assert len(data) < 4 * 1024 * 4 + 3 * 1024 * 8 + 512


@pytest.mark.parametrize("cut", [0, 3, 10, -1])
def test_truncated_or_corrupt_record_raises_state_error(cut: int) -> None:
    data = bn.state_to_bytes(bn.initial_state(bn.BNConfig(3)))
    with pytest.raises(bn.StateError):
        bn.state_from_bytes(data[:cut])
    with pytest.raises(bn.StateError):
        bn.state_from_bytes(data + b"\0")


def test_nan_in_a_stored_state_survives_the_round_trip() -> None:
    state = bn.initial_state(bn.BNConfig(2, nan_policy="propagate"))
    state, _ = bn.fit(state, np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32))
    back = bn.state_from_bytes(bn.state_to_bytes(state))
    assert np.isnan(back.running_mean[0])


def test_derived_memo_is_not_carried_into_new_states() -> None:
    state = bn.initial_state(bn.BNConfig(2))
    x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    before = bn.transform(state, x)
    fitted, _ = bn.fit(state, x)
    assert fitted.derived == {}
    assert not np.array_equal(bn.transform(fitted, x), before)
