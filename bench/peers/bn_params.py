"""The BatchNorm the peers serve: a bnaas session's exported statistics, inference mode.

Shared by the KServe and MLServer model files (it runs inside their virtual environments, so it
imports nothing but numpy). ``BNAAS_PEER_PARAMS`` names a JSON file written by bench/peers.py:
``{model_name: {"running_mean", "running_var", "weight", "bias", "eps"}}``, the names of bnaas's
``/stats`` export. y = x * scale + shift with scale and shift computed once in float64, as
bnaas does from the same numbers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


class Affine:
    """Per-channel ``(scale, shift)`` for inputs shaped (N, C)."""

    def __init__(self, stats: dict[str, Any]) -> None:
        mean = np.asarray(stats["running_mean"], np.float64)
        var = np.asarray(stats["running_var"], np.float64)
        weight = np.asarray(stats["weight"], np.float64)
        bias = np.asarray(stats["bias"], np.float64)
        scale = weight / np.sqrt(var + float(stats["eps"]))
        self.scale = scale.astype(np.float32)
        self.shift = (bias - mean * scale).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32, copy=False) * self.scale + self.shift


def load_all() -> dict[str, Affine]:
    """Every model named in the parameters file."""
    with open(os.environ["BNAAS_PEER_PARAMS"], encoding="utf-8") as f:
        return {name: Affine(stats) for name, stats in json.load(f).items()}
