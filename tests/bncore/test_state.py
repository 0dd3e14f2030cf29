"""Config validation, initial state, and the binary state record."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
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


def _fitted(config: bn.BNConfig, fits: int = 2) -> bn.BNState:
    rng = np.random.default_rng(1)
    state = bn.initial_state(config)
    c = config.num_features
    for _ in range(fits):
        state, _ = bn.fit(state, rng.normal(0, 1, (6, c)).astype(np.float32))
    return state


@pytest.mark.parametrize(
    "config",
    [
        bn.BNConfig(4),
        bn.BNConfig(3, affine=False, dtype="float64"),
        bn.BNConfig(2, track_running_stats=False, convention="keras", momentum=0.9),
    ],
)
def test_the_cached_record_header_writes_the_same_bytes_as_json(config: bn.BNConfig) -> None:
    state = _fitted(config)
    header = {
        "config": config.to_dict(),
        "num_batches_tracked": state.num_batches_tracked,
        "arrays": [[n, a.dtype.str] for n, a in state.buffers().items()]
        + [["pop_count", "<f8"], ["pop_mean", "<f8"], ["pop_m2", "<f8"]],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    pop = state.population
    arrays = [*state.buffers().values(), pop.count, pop.mean, pop.m2]
    expected = b"BNS\x01" + struct.pack("<I", len(head)) + head
    expected += b"".join(a.tobytes() for a in arrays)
    assert bn.state_to_bytes(state) == expected


def _odd_states() -> list[bn.BNState]:
    """States built by hand that the cached header does not describe."""
    state = _fitted(bn.BNConfig(4))
    assert state.weight is not None
    return [
        replace(state, config=bn.BNConfig(4, affine=False)),  # buffers the config has not
        replace(state, weight=None),  # one it has, missing
        replace(state, weight=np.arange(8, dtype=np.float32)[::2]),  # a strided view
        replace(state, bias=state.weight.astype(">f4")),  # big-endian
        replace(state, population=bn.Moments(*(v.astype(np.float32) for v in (
            state.population.count, state.population.mean, state.population.m2)))),
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(5))
def test_a_state_built_by_hand_writes_the_record_of_what_it_holds(index: int) -> None:
    state = _odd_states()[index]
    pop = state.population
    named = [*state.buffers().items(), ("pop_count", pop.count), ("pop_mean", pop.mean)]
    named.append(("pop_m2", pop.m2))
    header = {
        "config": state.config.to_dict(),
        "num_batches_tracked": state.num_batches_tracked,
        "arrays": [[n, a.dtype.newbyteorder("<").str] for n, a in named],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    expected = b"BNS\x01" + struct.pack("<I", len(head)) + head
    expected += b"".join(
        np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes() for _, a in named
    )
    assert bn.state_to_bytes(state) == expected


def test_a_state_in_other_dtypes_still_writes_its_own_record() -> None:
    state = _fitted(bn.BNConfig(3))
    assert state.running_mean is not None
    odd = replace(state, running_mean=state.running_mean.astype(np.float64))
    data = bn.state_to_bytes(odd)
    assert b'["running_mean","<f8"]' in data
    back = bn.state_from_bytes(data)  # read into the config's dtype, as any import is
    assert back.running_mean is not None and back.running_mean.dtype == np.float32
    np.testing.assert_array_equal(back.running_mean, state.running_mean)


@pytest.mark.parametrize(
    "config",
    [
        bn.BNConfig(5, momentum=None),
        bn.BNConfig(5, affine=False, dtype="float64"),
        bn.BNConfig(5, track_running_stats=False),
        bn.BNConfig(5, affine=False, track_running_stats=False),
    ],
)
def test_a_known_header_reads_back_the_same_state_each_time(config: bn.BNConfig) -> None:
    state = _fitted(config)
    data = bn.state_to_bytes(state)
    first, second = bn.state_from_bytes(data), bn.state_from_bytes(data)  # the 2nd: cached
    for back in (first, second):
        assert bn.state_to_bytes(back) == data
        assert back.config == state.config and back.num_batches_tracked == state.num_batches_tracked
        for name, value in state.buffers().items():
            assert back.buffers()[name].dtype == value.dtype
            assert back.buffers()[name].flags.writeable
    again, _ = bn.fit(second, np.ones((3, 5), np.float32))
    back = bn.state_from_bytes(bn.state_to_bytes(again))
    assert back.num_batches_tracked == again.num_batches_tracked


@pytest.mark.parametrize("count", [b"007", b"-1", b"9" * 19])
def test_a_known_header_with_a_bad_count_is_still_an_error(count: bytes) -> None:
    state = _fitted(bn.BNConfig(2))
    data = bn.state_to_bytes(state)
    bn.state_from_bytes(data)  # the header is now known
    head_len = struct.unpack_from("<I", data, 4)[0]
    head = data[8 : 8 + head_len].replace(
        b'"num_batches_tracked":2', b'"num_batches_tracked":' + count
    )
    bad = data[:4] + struct.pack("<I", len(head)) + head + data[8 + head_len :]
    with pytest.raises(bn.StateError):
        bn.state_from_bytes(bad)


def test_a_known_header_with_a_negative_running_var_is_still_an_error() -> None:
    state = _fitted(bn.BNConfig(2))
    data = bytearray(bn.state_to_bytes(state))
    bn.state_from_bytes(bytes(data))
    assert state.running_var is not None
    at = bytes(data).index(state.running_var.tobytes())
    data[at : at + 4] = np.float32(-1.0).tobytes()
    with pytest.raises(bn.StateError, match="running_var must be >= 0"):
        bn.state_from_bytes(bytes(data))


def test_ema_weights_follow_each_convention() -> None:
    assert bn.BNConfig(1, momentum=0.2).ema_weights(7) == (0.2, 0.8, False)
    assert bn.BNConfig(1, momentum=0.9, convention="onnx").ema_weights(7) == (1 - 0.9, 0.9, True)
    assert bn.BNConfig(1, momentum=None).ema_weights(4) == (0.25, 0.75, False)
    assert bn.BNConfig(1, momentum=None, convention="keras").ema_weights(2) == (0.5, 0.5, True)
