"""Keras / ONNX conventions: momentum is 1 - m, names differ, inference outputs are kept."""

from __future__ import annotations

import numpy as np
import pytest

import bncore as bn
from bncore.presets import biased_to_unbiased, unbiased_to_biased


def test_keras_export_inverts_momentum_and_renames() -> None:
    out = bn.export_state(bn.initial_state(bn.BNConfig(2, momentum=0.01, eps=1e-3)), "keras")
    assert set(out) == {"gamma", "beta", "moving_mean", "moving_variance", "momentum", "epsilon"}
    assert out["momentum"] == pytest.approx(0.99)
    assert out["epsilon"] == 1e-3


def test_onnx_round_trip_gives_back_our_names_and_momentum() -> None:
    state = bn.initial_state(bn.BNConfig(2, momentum=0.1))
    back = bn.import_values(bn.export_state(state, "onnx"), "onnx")
    assert back["momentum"] == pytest.approx(0.1)
    np.testing.assert_array_equal(back["running_var"], state.running_var)


def test_unknown_convention_and_field_are_config_errors() -> None:
    state = bn.initial_state(bn.BNConfig(2))
    with pytest.raises(bn.ConfigError, match="unknown convention"):
        bn.export_state(state, "caffe")
    with pytest.raises(bn.ConfigError, match="unknown keras field"):
        bn.import_values({"running_mean": [0, 0]}, "keras")


def test_keras_inference_formula_on_exported_values_matches_transform() -> None:
    rng = np.random.default_rng(0)
    state, _ = bn.fit(bn.initial_state(bn.BNConfig(3, dtype="float64")), rng.normal(4, 2, (20, 3)))
    k = bn.export_state(state, "keras")
    x = rng.normal(4, 2, (5, 3))
    keras_y = (x - k["moving_mean"]) / np.sqrt(k["moving_variance"] + k["epsilon"]) * k[
        "gamma"
    ] + k["beta"]
    np.testing.assert_allclose(keras_y, bn.transform(state, x), rtol=1e-12)


def test_bessel_conversions_are_inverse_and_hand_checked() -> None:
    assert unbiased_to_biased(4.0, 5) == pytest.approx(3.2)
    assert biased_to_unbiased(3.2, 5) == pytest.approx(4.0)
    with pytest.raises(bn.ConfigError):
        unbiased_to_biased(1.0, 1)
