"""ONNX's BatchNormalization node cases (tests/golden/generate_onnx.py, onnx's reference
evaluator) through bncore and through the HTTP routes: inference output, and training mode's
output and running statistics in a ``convention: onnx`` session (momentum = the old value's
weight, biased batch variance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import bncore as bn
from service.app import create_app
from service.settings import Settings

CASES = sorted((Path(__file__).parents[1] / "golden" / "onnx").glob("*.npz"))


def _load(path: Path) -> dict[str, Any]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _state(case: dict[str, Any]) -> bn.BNState:
    c = case["X"].shape[1]
    config = bn.BNConfig(
        c, eps=float(case["epsilon"]), momentum=float(case["momentum"]), convention="onnx"
    )
    return bn.initial_state(
        config,
        weight=case["scale"],
        bias=case["B"],
        running_mean=case["input_mean"],
        running_var=case["input_var"],
    )


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_onnx_node_cases_reproduce_in_bncore(engine_path: str, path: Path) -> None:
    case = _load(path)
    state = _state(case)
    if not case["training"]:
        np.testing.assert_allclose(bn.transform(state, case["X"]), case["Y"], atol=2e-6)
        return
    new, result = bn.fit(state, case["X"])
    assert result.output is not None
    np.testing.assert_allclose(result.output, case["Y"], atol=2e-6)
    assert new.running_mean is not None and new.running_var is not None
    np.testing.assert_allclose(new.running_mean, case["running_mean_out"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new.running_var, case["running_var_out"], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def client() -> Any:
    app = create_app(Settings(store="memory://", device="cpu"))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_onnx_node_cases_reproduce_over_http(client: TestClient, path: Path) -> None:
    case = _load(path)
    x = case["X"]
    r = client.post(
        "/v1/sessions",
        json={
            "num_features": x.shape[1],
            "convention": "onnx",
            "eps": float(case["epsilon"]),
            "momentum": float(case["momentum"]),
        },
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    onnx_doc = {
        "scale": case["scale"].tolist(),
        "B": case["B"].tolist(),
        "input_mean": case["input_mean"].tolist(),
        "input_var": case["input_var"].tolist(),
    }
    r = client.put(f"/v1/sessions/{sid}/stats?format=onnx", json=onnx_doc)
    assert r.status_code == 200, r.text
    route = "fit" if case["training"] else "transform"
    r = client.post(f"/v1/sessions/{sid}/{route}", json={"data": x.tolist()})
    assert r.status_code == 200, r.text
    y = np.asarray(r.json()["data"], np.float32).reshape(x.shape)
    np.testing.assert_allclose(y, case["Y"], atol=2e-6)
    if case["training"]:
        stats = client.get(f"/v1/sessions/{sid}/stats?format=onnx").json()
        np.testing.assert_allclose(stats["input_mean"], case["running_mean_out"], rtol=1e-6)
        np.testing.assert_allclose(stats["input_var"], case["running_var_out"], rtol=1e-6)
        assert stats["momentum"] == float(case["momentum"])  # as given, not 1 - (1 - m)
