"""Other frameworks' BatchNorm conventions, converted to and from PyTorch's (ours).

Keras and ONNX call ``momentum`` the weight of the *old* value (1 - m) and update their stored
variance with the *biased* batch variance; PyTorch stores the unbiased one. At inference all
three use the stored variance as it is, so a converted layer keeps its outputs when the stored
number is carried over unchanged: only momentum, eps defaults and names differ on export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bncore.backend import to_host
from bncore.errors import ConfigError
from bncore.state import BNState

__all__ = [
    "CONVENTIONS",
    "Convention",
    "biased_to_unbiased",
    "export_state",
    "import_values",
    "unbiased_to_biased",
]


@dataclass(frozen=True)
class Convention:
    """How a framework names, weighs and stores a BatchNorm layer's state."""

    name: str
    momentum_is_decay: bool
    stored_variance: Literal["unbiased", "biased"]
    default_eps: float
    names: dict[str, str]

    def momentum_out(self, momentum: float | None) -> float | None:
        """Our momentum (weight of the new batch) in this convention."""
        if momentum is None or not self.momentum_is_decay:
            return momentum
        return 1.0 - momentum

    def momentum_in(self, value: float | None) -> float | None:
        """This convention's momentum as ours; ``None`` (cumulative) only exists in PyTorch."""
        if value is None or not self.momentum_is_decay:
            return value
        if not 0 <= value < 1:
            raise ConfigError(f"{self.name} momentum must be in [0, 1), got {value}")
        return 1.0 - value


_TORCH_NAMES = {k: k for k in ("weight", "bias", "running_mean", "running_var")}
CONVENTIONS: dict[str, Convention] = {
    "torch": Convention("torch", False, "unbiased", 1e-5, _TORCH_NAMES),
    "keras": Convention(
        "keras",
        True,
        "biased",
        1e-3,
        {
            "weight": "gamma",
            "bias": "beta",
            "running_mean": "moving_mean",
            "running_var": "moving_variance",
        },
    ),
    "onnx": Convention(
        "onnx",
        True,
        "biased",
        1e-5,
        {"weight": "scale", "bias": "B", "running_mean": "input_mean", "running_var": "input_var"},
    ),
}


def _convention(name: str) -> Convention:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown convention {name!r}; known: {', '.join(CONVENTIONS)}") from None


def export_state(state: BNState, convention: str) -> dict[str, Any]:
    """The layer in ``convention``'s names: buffers as host arrays, plus momentum and epsilon."""
    conv = _convention(convention)
    out: dict[str, Any] = {conv.names[k]: to_host(v) for k, v in state.buffers().items()}
    m = state.config.momentum
    # the session keeps its momentum in its own convention: convert only across meanings
    same = CONVENTIONS[state.config.convention].momentum_is_decay == conv.momentum_is_decay
    out["momentum"] = (
        m
        if same
        else conv.momentum_out(m)
        if conv.momentum_is_decay
        else (None if m is None else 1.0 - m)
    )
    out["epsilon"] = state.config.eps
    return out


def import_values(values: dict[str, Any], convention: str) -> dict[str, Any]:
    """Inverse of ``export_state`` for a torch-convention session: a dict in PyTorch's names
    and momentum meaning (buffers, ``momentum``, ``eps``). ``bncore.import_doc`` restores any
    session exactly (the service uses it)."""
    conv = _convention(convention)
    theirs = {v: k for k, v in conv.names.items()}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "momentum":
            out["momentum"] = conv.momentum_in(value)
        elif key == "epsilon":
            out["eps"] = value
        elif key in theirs:
            out[theirs[key]] = value
        else:
            raise ConfigError(f"unknown {conv.name} field {key!r}")
    return out


def unbiased_to_biased(var: Any, n: int) -> Any:
    """One batch's unbiased variance (PyTorch's) as the biased one (Keras/ONNX): × (n-1)/n."""
    if n < 2:
        raise ConfigError(f"need n >= 2 values to convert a variance, got {n}")
    return var * ((n - 1) / n)


def biased_to_unbiased(var: Any, n: int) -> Any:
    """One batch's biased variance as the unbiased one: × n/(n-1)."""
    if n < 2:
        raise ConfigError(f"need n >= 2 values to convert a variance, got {n}")
    return var * (n / (n - 1))
