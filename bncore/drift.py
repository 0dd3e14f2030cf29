"""Drift of one batch against the running statistics it is about to update, per channel.

With vb = var_B + eps (biased batch variance) and vr = running_var + eps:
``mean_shift = (mean_B - running_mean) / sqrt(vr)``, ``log_var_ratio = log(vb / vr)`` and
``kl = KL(N(mean_B, vb) || N(running_mean, vr)) = 0.5 * (log(vr / vb) + (vb + d^2) / vr - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bncore import kernels
from bncore.backend import Array, namespace, to_host
from bncore.moments import Moments, quiet
from bncore.state import BNConfig, BNState

__all__ = ["Drift", "drift", "flags"]


@dataclass(frozen=True, init=False)
class Drift:
    """Per-channel drift measures, float64 (C,) arrays (NaN where a statistic is NaN)."""

    mean_shift: Array
    log_var_ratio: Array
    kl: Array

    def __init__(self, mean_shift: Array, log_var_ratio: Array, kl: Array) -> None:
        # as Moments: the instance dict filled directly, not a setattr per field
        d = self.__dict__
        d["mean_shift"], d["log_var_ratio"], d["kl"] = mean_shift, log_var_ratio, kl

    def summary(self, top: int = 5) -> dict[str, Any]:
        """Max and mean over channels, and the ``top`` channels with the largest KL."""
        kl, shift, ratio = self.kl, self.mean_shift, self.log_var_ratio
        if not (type(kl) is type(shift) is type(ratio) is np.ndarray):  # per fit: no calls
            kl, shift, ratio = to_host(kl), to_host(shift), to_host(ratio)
        found = kernels.drift_summary(kl, shift, ratio, top)
        if found is not None:  # one C pass, NumPy's bits
            max_kl, mean_kl, max_shift, max_ratio, channels = found
        else:
            with quiet(namespace(kl)):
                order = (-kl).argsort(kind="stable")[:top]
                max_kl, mean_kl = float(kl.max()), float(kl.mean())
                max_shift, max_ratio = float(abs(shift).max()), float(abs(ratio).max())
                channels = [int(c) for c in order]
        return {
            "max_kl": max_kl,
            "mean_kl": mean_kl,
            "max_abs_mean_shift": max_shift,
            "max_abs_log_var_ratio": max_ratio,
            "top_kl_channels": channels,
        }


def flags(config: BNConfig, summary: dict[str, Any]) -> list[str]:
    """The session's drift thresholds that a fit's ``Drift.summary()`` exceeds (empty: none)."""
    out = []
    if config.drift_max_kl is not None and summary["max_kl"] > config.drift_max_kl:
        out.append("kl")
    shift = config.drift_max_mean_shift
    if shift is not None and summary["max_abs_mean_shift"] > shift:
        out.append("mean_shift")
    return out


def drift(state: BNState, batch: Moments) -> Drift | None:
    """Drift of ``batch`` against ``state``'s running statistics (None when not tracked)."""
    rm, rv = state.running_mean, state.running_var
    if rm is None or rv is None:
        return None
    eps = state.config.eps
    found = kernels.drift(batch, rm, rv, eps)
    if found is not None:  # one C call (glibc's log: NumPy's SIMD log may differ by 1 ulp)
        return Drift(*found)
    xp = namespace(batch.mean)
    with quiet(xp):
        vb = batch.m2 / batch.count + eps
        vr = rv.astype(xp.float64) + eps
        d = batch.mean - rm.astype(xp.float64)
        return Drift(
            mean_shift=d / xp.sqrt(vr),
            log_var_ratio=xp.log(vb / vr),
            kl=0.5 * (xp.log(vr / vb) + (vb + d * d) / vr - 1.0),
        )
