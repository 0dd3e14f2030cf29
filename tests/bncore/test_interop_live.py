"""Exports checked by the frameworks themselves: torch (strict state_dict loads with prefixes,
fusion utils), onnxruntime (the exported model), Keras 3 on the torch backend (inference with
the keras export, and a training step continued in a ``convention: keras`` session)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import bncore as bn

torch = pytest.importorskip("torch")
MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def _fitted(ndim: int, c: int = 3, **kw: Any) -> tuple[bn.BNState, np.ndarray]:
    rng = np.random.default_rng(ndim)
    affine = kw.get("affine", True)
    state = bn.initial_state(
        bn.BNConfig(c, **kw),
        weight=rng.uniform(0.5, 2, c) if affine else None,
        bias=rng.normal(0, 1, c) if affine else None,
    )
    dtype = kw.get("dtype", "float32")
    last = kw.get("channel_axis", 1) == -1
    shape = (4, *(3,) * (ndim - 2), c) if last else (4, c, *(3,) * (ndim - 2))
    for _ in range(2):
        state, _ = bn.fit(state, rng.normal(2, 3, shape).astype(dtype))
    return state, rng.normal(2, 3, shape).astype(dtype)


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_safetensors_export_loads_strictly_into_torch_under_a_prefix(ndim: int) -> None:
    from safetensors.torch import load

    from service.codecs import encode_safetensors

    state, x = _fitted(ndim, momentum=0.3)
    tensors, meta = bn.export_tensors(state, "features.1.")
    model = torch.nn.Sequential(
        torch.nn.Identity(), getattr(torch.nn, MODULES[ndim])(3, eps=1e-5, momentum=0.3)
    )
    model = torch.nn.Sequential(model)  # keys "0.1.*": load under our prefix instead
    features = torch.nn.Module()
    features.features = model[0]
    loaded = load(encode_safetensors(tensors, meta))
    features.load_state_dict(loaded, strict=True)
    features.eval()
    y = features.features(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, bn.transform(state, x), atol=1e-5)
    assert int(features.features[1].num_batches_tracked) == state.num_batches_tracked
    back, assumed = bn.import_tensors(
        state, load(encode_safetensors(tensors, meta)), meta, "features.1."
    )
    assert assumed == {} and back.config == state.config


@pytest.mark.parametrize(
    ("ndim", "transposed", "groups"),
    [(2, False, 1), (4, False, 1), (4, True, 1), (4, True, 3), (5, True, 1)],
)
def test_fold_matches_torch_fusion(ndim: int, transposed: bool, groups: int) -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    c = 6
    state, _ = _fitted(4, c)
    bnm = torch.nn.BatchNorm2d(c)
    bnm.load_state_dict({k: torch.from_numpy(v) for k, v in bn.export_tensors(state)[0].items()})
    bnm.eval()
    if ndim == 2:
        layer: Any = torch.nn.Linear(5, c)
        fused = fuse_linear_bn_eval(layer.eval(), bnm)
    else:
        conv = {
            4: (torch.nn.Conv2d, torch.nn.ConvTranspose2d),
            5: (torch.nn.Conv3d, torch.nn.ConvTranspose3d),
        }[ndim][transposed]
        layer = conv(6, c, 3, groups=groups)
        # torch's fusion does not handle grouped ConvTranspose weights (in, out/groups, ...)
        fused = None if groups > 1 else fuse_conv_bn_eval(layer.eval(), bnm, transpose=transposed)
    w, b = bn.fold(
        state,
        layer.weight.detach().numpy(),
        layer.bias.detach().numpy(),
        transposed=transposed,
        groups=groups,
    )
    if fused is not None:
        np.testing.assert_allclose(w, fused.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, fused.bias.detach().numpy(), rtol=1e-5, atol=1e-6)
        return
    # compare the layers' outputs instead
    xin = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        expected = bnm(layer(xin)).numpy()
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(b))
        np.testing.assert_allclose(layer(xin).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_fold_of_integer_inputs_gives_floats() -> None:
    state = bn.initial_state(bn.BNConfig(3), running_mean=[0.5, 0.5, 0.5])
    w, b = bn.fold(state, np.ones((3, 2), np.int64), np.array([1, 2, 3], np.int64))
    assert w.dtype == np.float32 and b.dtype == np.float32
    np.testing.assert_allclose(b, (np.array([1, 2, 3]) - 0.5) / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"ndim": 2},
        {"ndim": 3},
        {"ndim": 4},
        {"ndim": 5},
        {"ndim": 4, "channel_axis": -1},
        {"ndim": 2, "channel_axis": -1, "affine": False},
        {"ndim": 4, "dtype": "float64"},
        {"ndim": 3, "channel_axis": -1, "dtype": "float64"},
    ],
)
def test_onnx_model_runs_in_onnxruntime_like_transform(kw: dict[str, Any]) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ndim = kw.pop("ndim")
    state, x = _fitted(ndim, **kw)
    model = bn.onnx_model(state, ndim)
    onnx.checker.check_model(onnx.load_from_string(model))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"X": x})
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_allclose(
        y, bn.transform(state, x), atol=1e-6 if x.dtype == np.float64 else 2e-6
    )
    if ndim > 2:  # symbolic dims: another batch size and spatial size run too
        x2 = np.concatenate([x, x])
        (y2,) = session.run(None, {"X": x2})
        np.testing.assert_allclose(y2, bn.transform(state, x2), atol=2e-6)


@pytest.fixture
def keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras runs on another backend in this process")
    return keras


def _keras_layer(keras: Any, doc: dict[str, Any], shape: tuple[int, ...]) -> Any:
    layer = keras.layers.BatchNormalization(
        axis=doc["axis"], momentum=doc["momentum"], epsilon=doc["epsilon"]
    )
    layer.build(shape)
    layer.set_weights(
        [
            np.asarray(doc[k], np.float32)
            for k in ("gamma", "beta", "moving_mean", "moving_variance")
        ]
    )
    return layer


# Keras's torch backend trips NumPy 2's __array__(copy=) deprecation: not ours to fix
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_keras_export_runs_in_keras(keras: Any, channel_axis: int) -> None:
    state, x = _fitted(4, convention="keras", momentum=0.99, eps=1e-3, channel_axis=channel_axis)
    doc = bn.export_doc(state, "keras")
    layer = _keras_layer(keras, doc, x.shape)
    y = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(y, bn.transform(state, x), atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_keras_training_step_continues_in_a_keras_session(keras: Any) -> None:
    state, x = _fitted(2, c=5, convention="keras", momentum=0.9, eps=1e-3)
    doc = bn.export_doc(state, "keras")
    layer = _keras_layer(keras, doc, x.shape)
    y_keras = keras.ops.convert_to_numpy(layer(x, training=True))
    new, result = bn.fit(state, x)
    assert result.output is not None
    np.testing.assert_allclose(result.output, y_keras, atol=1e-4)
    _, _, mm, mv = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    np.testing.assert_allclose(new.running_mean, mm, rtol=1e-5, atol=1e-6)  # type: ignore[arg-type]
    np.testing.assert_allclose(new.running_var, mv, rtol=1e-4, atol=1e-6)  # type: ignore[arg-type]
