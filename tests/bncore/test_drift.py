"""Drift per channel: hand-derived cases and the closed-form KL of two normals."""

from __future__ import annotations

import math

import numpy as np

import bncore as bn


def test_drift_of_a_batch_equal_to_the_running_statistics_is_zero() -> None:
    s = bn.initial_state(bn.BNConfig(2, eps=1e-5))
    # mean 0 and biased var 1 per channel, as the initial running statistics: vb == vr
    batch = bn.Moments(np.array([4.0, 4.0]), np.zeros(2), np.full(2, 4.0))
    d = bn.drift(s, batch)
    assert d is not None
    assert d.kl.tolist() == [0.0, 0.0]
    assert d.mean_shift.tolist() == [0.0, 0.0]
    assert d.log_var_ratio.tolist() == [0.0, 0.0]


def test_drift_matches_the_hand_derived_kl_of_two_normals() -> None:
    # running N(0, 1), batch N(2, 4) with eps folded in by hand: vb = 4, vr = 1
    s = bn.initial_state(bn.BNConfig(1, eps=1e-12))
    batch = bn.Moments(np.array([10.0]), np.array([2.0]), np.array([40.0 - 10e-12]))
    d = bn.drift(s, batch)
    assert d is not None
    expected = 0.5 * (math.log(1 / 4) + (4 + 4) / 1 - 1)
    np.testing.assert_allclose(d.kl, [expected], rtol=1e-9)
    np.testing.assert_allclose(d.mean_shift, [2.0], rtol=1e-9)
    np.testing.assert_allclose(d.log_var_ratio, [math.log(4)], rtol=1e-9)
    summary = d.summary()
    assert summary["top_kl_channels"] == [0]
    assert math.isclose(summary["max_kl"], expected, rel_tol=1e-9)


def test_drift_is_none_without_running_statistics() -> None:
    s = bn.initial_state(bn.BNConfig(2, track_running_stats=False))
    assert bn.drift(s, bn.Moments(np.full(2, 3.0), np.zeros(2), np.ones(2))) is None


def test_flags_name_the_thresholds_a_fit_exceeds() -> None:
    cfg = bn.BNConfig(1, drift_max_kl=0.5, drift_max_mean_shift=3.0)
    summary = {"max_kl": 0.6, "max_abs_mean_shift": 2.0}
    assert bn.drift_flags(cfg, summary) == ["kl"]
    assert bn.drift_flags(bn.BNConfig(1), {"max_kl": 1e9, "max_abs_mean_shift": 1e9}) == []
