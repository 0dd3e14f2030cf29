"""Export -> import is the identity, bit for bit, for every format and convention; imports
validate every value; partial moments merge exactly (Chan) and agree with scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bncore as bn


def _fitted(
    convention: str = "torch",
    momentum: Any = "default",
    affine: bool = True,
    nan_policy: str = "reject",
    dtype: str = "float32",
    fits: int = 3,
    seed: int = 0,
) -> bn.BNState:
    kw: dict[str, Any] = {"affine": affine, "nan_policy": nan_policy, "dtype": dtype}
    if momentum != "default":
        kw["momentum"] = momentum
    state = bn.initial_state(bn.BNConfig.for_convention(convention, num_features=4, **kw))
    rng = np.random.default_rng(seed)
    for _ in range(fits):
        x = rng.normal(rng.uniform(-5, 5), rng.uniform(0.1, 3), (int(rng.integers(2, 9)), 4))
        state, _ = bn.fit(state, x.astype(dtype))
    return state


def _same(a: bn.BNState, b: bn.BNState) -> None:
    assert a.config == b.config
    assert a.num_batches_tracked == b.num_batches_tracked
    for name in ("weight", "bias", "running_mean", "running_var"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name in ("count", "mean", "m2"):
        np.testing.assert_array_equal(getattr(a.population, name), getattr(b.population, name))


def _via_json(doc: dict[str, Any]) -> Any:
    return orjson.loads(orjson.dumps(doc))


def _blank(state: bn.BNState) -> bn.BNState:
    """A fresh session of the same shape, in another convention: the import must restore it."""
    cfg = state.config
    return bn.initial_state(
        bn.BNConfig(cfg.num_features, affine=cfg.affine, dtype=cfg.dtype, nan_policy=cfg.nan_policy)
    )


@settings(max_examples=40, deadline=None)
@given(
    convention=st.sampled_from(["torch", "keras", "onnx"]),
    fmt=st.sampled_from(["json", "keras", "onnx", "safetensors"]),
    momentum=st.one_of(st.just("default"), st.none(), st.floats(0.01, 0.99)),
    affine=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 1000),
)
def test_every_export_imports_back_bit_for_bit(
    convention: str, fmt: str, momentum: Any, affine: bool, dtype: str, seed: int
) -> None:
    state = _fitted(convention, momentum, affine, dtype=dtype, seed=seed)
    if fmt == "safetensors":
        tensors, meta = bn.export_tensors(state, "features.1.")
        back, assumed = bn.import_tensors(_blank(state), tensors, meta, "features.1.")
        assert assumed == {}
    elif fmt in ("keras", "onnx") and state.config.momentum is None:
        with pytest.raises(bn.ConfigError, match="cannot express"):
            bn.export_doc(state, fmt)  # type: ignore[arg-type]
        return
    else:
        doc = _via_json(bn.export_doc(state, fmt))  # type: ignore[arg-type]
        back = bn.import_doc(_blank(state), doc, fmt)  # type: ignore[arg-type]
    _same(back, state)


def test_momentum_is_kept_as_given_in_its_convention() -> None:
    keras = _fitted("keras")
    assert keras.config.momentum == 0.99 and keras.config.eps == 1e-3
    assert bn.export_doc(keras, "keras")["momentum"] == 0.99
    assert bn.export_doc(keras, "json")["momentum"] == 0.99
    torch = _fitted("torch", 0.1)
    assert bn.export_doc(torch, "json")["momentum"] == 0.1
    doc = _via_json(bn.export_doc(torch, "keras"))
    assert doc["momentum"] == 0.9 and doc["bnaas"]["momentum"] == 0.1
    assert bn.import_doc(_blank(torch), doc, "keras").config.momentum == 0.1  # not 0.0999...


def test_a_propagate_session_with_nan_imports_back() -> None:
    state = bn.initial_state(bn.BNConfig(2, nan_policy="propagate"))
    state, _ = bn.fit(state, np.array([[1.0, np.nan], [2.0, 3.0]], np.float32))
    doc = _via_json(bn.export_doc(state, "json"))
    assert doc["running_mean"][1] is None
    back = bn.import_doc(state, doc)
    _same(back, state)
    # changing eps alone never trips over the NaN buffers it keeps
    assert bn.import_doc(state, {"eps": 1e-3}).config.eps == 1e-3
    with pytest.raises(bn.ValueRangeError, match="finite"):
        bn.import_doc(bn.initial_state(bn.BNConfig(2)), doc)  # a reject session refuses NaN


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"num_batches_tracked": 2**64 - 1}, bn.ValueRangeError),
        ({"num_batches_tracked": -1}, bn.ValueRangeError),
        ({"num_batches_tracked": 1.5}, bn.ValueRangeError),
        ({"num_batches_tracked": True}, bn.ValueRangeError),
        ({"eps": float("inf")}, bn.ValueRangeError),
        ({"eps": 0}, bn.ConfigError),
        ({"momentum": 1.5}, bn.ConfigError),
        ({"momentum": "x"}, bn.ValueRangeError),
        ({"running_var": [1, -1, 1, 1]}, bn.ValueRangeError),
        ({"weight": [1, 2]}, bn.ShapeError),
        ({"weight": [1, float("inf"), 1, 1]}, bn.ValueRangeError),
        ({"weight": [1, True, 1, 1]}, bn.ShapeError),
        ({"population": {"count": [-1, 0, 0, 0], "mean": [0] * 4, "m2": [0] * 4}}, bn.BNError),
        ({"population": {"count": 2**63, "mean": [0] * 4, "var": [1] * 4}}, bn.ValueRangeError),
        ({"population": {"count": 3, "mean": [0] * 4}}, bn.ShapeError),
        ({"convention": "mxnet"}, bn.ConfigError),
        ({"channel_axis": 2}, bn.ConfigError),
        ({"bogus": 1}, bn.ConfigError),
    ],
)
def test_bad_imports_are_refused(doc: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        bn.import_doc(_fitted(), doc)


def test_keras_momentum_must_be_a_number() -> None:
    with pytest.raises(bn.ValueRangeError, match="momentum"):
        bn.import_doc(_fitted("keras"), {"momentum": "x"}, "keras")


@pytest.mark.parametrize(
    "tensor",
    [
        np.array(1e30, np.float32),
        np.array(np.nan, np.float32),
        np.array([1, 2], np.int64),
        np.array(-3, np.int64),
    ],
)
def test_bad_num_batches_tracked_tensors_are_refused(tensor: np.ndarray) -> None:
    state = _fitted()
    tensors, meta = bn.export_tensors(state)
    tensors["num_batches_tracked"] = tensor
    with pytest.raises(bn.ValueRangeError, match="num_batches_tracked"):
        bn.import_tensors(state, tensors, meta)


def test_a_plain_state_dict_says_what_it_assumed_or_takes_the_overrides() -> None:
    state = _fitted()
    tensors, _ = bn.export_tensors(state)
    _, assumed = bn.import_tensors(state, tensors, {})
    assert assumed == {"eps": 1e-5, "momentum": 0.1}
    new, assumed = bn.import_tensors(state, tensors, {}, overrides={"eps": 1e-3, "momentum": 0.2})
    assert assumed == {} and new.config.eps == 1e-3 and new.config.momentum == 0.2


def test_fit_half_and_merge_the_other_half_equals_fitting_everything() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(3, 2, (500, 4))
    b = rng.normal(-1, 0.5, (700, 4))
    config = bn.BNConfig(4, dtype="float64")
    fitted, _ = bn.fit(bn.initial_state(config), a)
    moments = bn.partial_moments(
        700, b.mean(0).tolist(), m2=((b - b.mean(0)) ** 2).sum(0).tolist(), num_features=4
    )
    merged = bn.merge_population(fitted, moments)
    everything, _ = bn.fit(bn.initial_state(config), np.concatenate([a, b]))
    np.testing.assert_allclose(merged.population.mean, everything.population.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.population.var, everything.population.var, rtol=1e-12)
    assert (merged.population.count == 1200).all()
    # the EMA is untouched by a merge
    np.testing.assert_array_equal(merged.running_mean, fitted.running_mean)  # type: ignore[arg-type]
    assert merged.num_batches_tracked == fitted.num_batches_tracked


def test_merge_agrees_with_scikit_learn_partial_fit() -> None:
    sklearn = pytest.importorskip("sklearn.preprocessing")
    rng = np.random.default_rng(8)
    batches = [rng.normal(100, 3, (n, 3)) for n in (5, 17, 40)]
    scaler = sklearn.StandardScaler()
    state = bn.initial_state(bn.BNConfig(3, dtype="float64"))
    for x in batches:
        part = sklearn.StandardScaler().fit(x)
        state = bn.merge_population(
            state,
            bn.partial_moments(
                int(part.n_samples_seen_), part.mean_.tolist(), var=part.var_.tolist(),
                num_features=3,
            ),
        )  # fmt: skip
        scaler.partial_fit(x)
    np.testing.assert_allclose(state.population.mean, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(state.population.var, scaler.var_, rtol=1e-12)
    exported = bn.sklearn_scaler(state)
    assert exported["n_samples_seen_"] == scaler.n_samples_seen_
    np.testing.assert_allclose(exported["scale_"], scaler.scale_, rtol=1e-12)


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"count": -1, "mean": [0.0] * 3, "m2": [0.0] * 3}, bn.ValueRangeError),
        ({"count": [1, 2], "mean": [0.0] * 3, "m2": [0.0] * 3}, bn.ShapeError),
        ({"count": 4, "mean": [0.0] * 3, "m2": [-1.0, 0, 0]}, bn.ValueRangeError),
        ({"count": 4, "mean": [float("nan"), 0, 0], "var": [1.0] * 3}, bn.ValueRangeError),
        ({"count": [1.5, 1, 1], "mean": [0.0] * 3, "var": [1.0] * 3}, bn.ValueRangeError),
    ],
)
def test_partial_moments_are_validated(kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        bn.partial_moments(num_features=3, **kw)
