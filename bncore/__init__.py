"""bncore: BatchNorm that matches PyTorch, as pure functions over NumPy or CuPy arrays."""

from bncore.backend import Backend, Device, namespace, select, to_host
from bncore.batchnorm import (
    FitResult,
    Gradients,
    affine_params,
    apply_batch,
    backward,
    batch_stats,
    check_input,
    fit,
    fold,
    normalize,
    transform,
)
from bncore.drift import Drift, drift
from bncore.drift import flags as drift_flags
from bncore.errors import (
    BatchSizeError,
    BNError,
    ConfigError,
    DTypeError,
    NonFiniteError,
    ShapeError,
    StateError,
    ValueRangeError,
)
from bncore.exchange import (
    export_doc,
    export_tensors,
    import_doc,
    import_tensors,
    merge_population,
    partial_moments,
)
from bncore.moments import Moments, NanPolicy, batch_moments, channels_view
from bncore.onnx_model import OnnxUnavailable, onnx_model, sklearn_scaler
from bncore.presets import CONVENTIONS, Convention, export_state, import_values
from bncore.state import BNConfig, BNState, initial_state, state_from_bytes, state_to_bytes

__all__ = [
    "CONVENTIONS",
    "BNConfig",
    "BNError",
    "BNState",
    "Backend",
    "BatchSizeError",
    "ConfigError",
    "Convention",
    "DTypeError",
    "Device",
    "Drift",
    "FitResult",
    "Gradients",
    "Moments",
    "NanPolicy",
    "NonFiniteError",
    "OnnxUnavailable",
    "ShapeError",
    "StateError",
    "ValueRangeError",
    "affine_params",
    "apply_batch",
    "backward",
    "batch_moments",
    "batch_stats",
    "channels_view",
    "check_input",
    "drift",
    "drift_flags",
    "export_doc",
    "export_state",
    "export_tensors",
    "fit",
    "fold",
    "import_doc",
    "import_tensors",
    "import_values",
    "initial_state",
    "merge_population",
    "namespace",
    "normalize",
    "onnx_model",
    "partial_moments",
    "select",
    "sklearn_scaler",
    "state_from_bytes",
    "state_to_bytes",
    "to_host",
    "transform",
]
