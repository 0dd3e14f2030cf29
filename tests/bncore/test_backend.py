"""Backend selection and the public API surface."""

from __future__ import annotations

import numpy as np
import pytest

import bncore as bn
from bncore import backend


def test_cpu_forces_numpy() -> None:
    b = bn.select("cpu")
    assert b.name == "numpy" and b.xp is np


def test_auto_falls_back_to_numpy_and_says_why_without_a_gpu() -> None:
    b = bn.select("auto")
    if b.name == "numpy":
        assert "numpy fallback" in b.reason


def test_cuda_without_a_gpu_raises() -> None:
    if backend._cupy_with_device()[0] is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device 'cuda' requested"):
        bn.select("cuda")


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="device must be"):
        bn.select("tpu")  # type: ignore[arg-type]


def test_to_host_is_identity_for_numpy() -> None:
    a = np.zeros(3)
    assert bn.to_host(a) is a


def test_public_api_is_pinned() -> None:
    assert sorted(bn.__all__) == sorted(
        [
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
    )
    for name in bn.__all__:
        assert hasattr(bn, name)
