"""The layer as a runnable ONNX model (inference mode), and as scikit-learn StandardScaler
attributes. ``onnx`` is an optional extra (``pip install bnaas[onnx]``), imported here only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bncore.errors import ConfigError
from bncore.state import BNState

__all__ = ["OnnxUnavailable", "onnx_model", "sklearn_scaler"]


class OnnxUnavailable(RuntimeError):
    """The ``onnx`` package is not installed (the ``onnx`` extra)."""


def onnx_model(state: BNState, ndim: int = 2, opset: int = 15) -> bytes:
    """A serialized ONNX model ``Y = BatchNormalization(X)`` with the running statistics.

    X has rank ``ndim`` (2 to 5), every dimension symbolic but the channel one; channels-last
    sessions get a Transpose to channels-first and back around the node. Without affine the
    scale is 1 and B 0 (ONNX requires both). X, Y and the initializers have the session's
    dtype (float32 or float64)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:  # the optional extra
        raise OnnxUnavailable(
            "ONNX model export needs the onnx package: pip install 'bnaas[onnx]'"
        ) from exc
    cfg = state.config
    if not 2 <= ndim <= 5:
        raise ConfigError(f"ndim must be 2 to 5, got {ndim}")
    if state.running_mean is None or state.running_var is None:
        raise ConfigError(
            "an inference model needs running statistics (the session has track_running_stats "
            "false)"
        )
    c, dt = cfg.num_features, np.dtype(cfg.dtype)
    elem = TensorProto.FLOAT if dt == np.float32 else TensorProto.DOUBLE
    host = state.to_host()
    weight = host.weight if host.weight is not None else np.ones(c, dt)
    bias = host.bias if host.bias is not None else np.zeros(c, dt)
    inits = [
        numpy_helper.from_array(np.asarray(a, dt), name)
        for name, a in (
            ("scale", weight),
            ("B", bias),
            ("input_mean", host.running_mean),
            ("input_var", host.running_var),
        )
    ]
    last = cfg.channel_axis == -1
    shape: list[Any] = [f"d{i}" for i in range(ndim)]
    shape[ndim - 1 if last else 1] = c
    nodes = []
    x_in = "X"
    if last:  # (N, *S, C) -> (N, C, *S) and back
        to_first = [0, ndim - 1, *range(1, ndim - 1)]
        to_last = [0, *range(2, ndim), 1]
        nodes.append(helper.make_node("Transpose", ["X"], ["X_cf"], perm=to_first))
        x_in = "X_cf"
    y_out = "Y_cf" if last else "Y"
    nodes.append(
        helper.make_node(
            "BatchNormalization",
            [x_in, "scale", "B", "input_mean", "input_var"],
            [y_out],
            epsilon=float(cfg.eps),
        )
    )
    if last:
        nodes.append(helper.make_node("Transpose", ["Y_cf"], ["Y"], perm=to_last))
    graph = helper.make_graph(
        nodes,
        "bnaas_batchnorm",
        [helper.make_tensor_value_info("X", elem, shape)],
        [helper.make_tensor_value_info("Y", elem, shape)],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="bnaas"
    )
    model.ir_version = 8  # readable by onnxruntime releases from 1.10 on
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def sklearn_scaler(state: BNState) -> dict[str, Any]:
    """The population as a fitted ``sklearn.preprocessing.StandardScaler``'s attributes:
    ``mean_``, ``var_`` (biased), ``scale_`` (sqrt(var_), 1 where the variance is 0, as
    scikit-learn does), ``n_samples_seen_`` (one integer when every feature saw the same
    count, else one per feature) and ``n_features_in_``. Features never seen are null."""
    host = state.to_host()
    pop = host.population
    count = np.asarray(pop.count)
    seen = count > 0
    mean = np.where(seen, pop.mean, np.nan)
    var = np.where(seen, pop.m2 / np.maximum(count, 1.0), np.nan)
    scale = np.sqrt(var)
    scale = np.where(scale < 10 * np.finfo(np.float64).eps, 1.0, scale)

    def floats(a: Any) -> list[float | None]:
        return [None if math.isnan(v) else v for v in np.asarray(a, np.float64).tolist()]

    counts = [int(v) for v in count.tolist()]
    return {
        "mean_": floats(mean),
        "var_": floats(var),
        "scale_": floats(scale),
        "n_samples_seen_": counts[0] if len(set(counts)) == 1 else counts,
        "n_features_in_": host.config.num_features,
        "with_mean": True,
        "with_std": True,
    }
