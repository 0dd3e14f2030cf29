"""Engine errors: one class per kind of bad input, each message naming the offending value."""

from __future__ import annotations

__all__ = [
    "BNError",
    "BatchSizeError",
    "ConfigError",
    "DTypeError",
    "NonFiniteError",
    "ShapeError",
    "StateError",
    "ValueRangeError",
]


class BNError(ValueError):
    """Base class of every error bncore raises for bad input or configuration."""


class ConfigError(BNError):
    """A session configuration value is out of its domain (eps <= 0, momentum > 1, ...)."""


class ShapeError(BNError):
    """An array has the wrong rank, channel count or shape."""


class DTypeError(BNError):
    """An array has a dtype the engine does not compute in."""


class BatchSizeError(BNError):
    """Train mode needs more than one value per channel (PyTorch's rule)."""


class ValueRangeError(BNError):
    """A number is outside its domain: a learning rate that is not finite and > 0, a negative
    variance, a count that is not a non-negative integer below 2**63, a step that would make
    the weights non-finite."""


class StateError(BNError):
    """A state record or buffer is inconsistent with its configuration."""


class NonFiniteError(BNError):
    """Input holds NaN or Inf under ``nan_policy='reject'``; ``channels`` lists where."""

    def __init__(self, channels: list[int], what: str = "input") -> None:
        self.channels = channels
        shown = ", ".join(str(c) for c in channels[:16])
        more = f" and {len(channels) - 16} more" if len(channels) > 16 else ""
        super().__init__(
            f"{what} has NaN or Inf values in channel(s) {shown}{more} "
            "(nan_policy 'reject'; use 'propagate' or 'omit' to accept them)"
        )
