"""Regenerate the ONNX BatchNormalization golden cases with ONNX's own reference evaluator.

    pip install 'bnaas[onnx]' && python tests/golden/generate_onnx.py

The cases follow onnx's node tests (test_batchnorm_epsilon, test_batchnorm_example and their
_training_mode variants): inference (Y) and training mode (Y, running_mean, running_var with
ONNX's momentum = the old value's weight and the biased batch variance). Writes small .npz
files next to this script; tests/bncore/test_onnx_golden.py replays them through bncore and
the HTTP routes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

OUT = Path(__file__).parent / "onnx"


def _case(name: str, shape: tuple[int, ...], eps: float, momentum: float, training: bool) -> None:
    rng = np.random.default_rng(sum(name.encode()))  # fixed per case
    c = shape[1]
    x = rng.normal(0.5, 2.0, shape).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.normal(0, 1, c).astype(np.float32)
    mean = rng.normal(0, 1, c).astype(np.float32)
    var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    outputs = ["Y", "running_mean", "running_var"] if training else ["Y"]
    node = helper.make_node(
        "BatchNormalization",
        ["X", "scale", "B", "input_mean", "input_var"],
        outputs,
        epsilon=eps,
        momentum=momentum,
        training_mode=int(training),
    )
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        name,
        [
            helper.make_tensor_value_info("X", f, list(shape)),
            *(helper.make_tensor_value_info(n, f, [c]) for n in node.input[1:]),
        ],
        [helper.make_tensor_value_info(n, f, None) for n in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    feeds = {"X": x, "scale": scale, "B": bias, "input_mean": mean, "input_var": var}
    got = ReferenceEvaluator(model).run(None, feeds)
    arrays = {**feeds, "Y": got[0]}
    if training:
        arrays["running_mean_out"], arrays["running_var_out"] = got[1], got[2]
    np.savez_compressed(
        OUT / f"{name}.npz",
        **arrays,
        epsilon=np.float64(eps),
        momentum=np.float64(momentum),
        training=np.bool_(training),
    )


def main() -> None:
    OUT.mkdir(exist_ok=True)
    _case("batchnorm_example", (2, 3, 4, 5), 1e-5, 0.9, False)
    _case("batchnorm_epsilon", (2, 3, 4, 5), 1e-2, 0.9, False)
    _case("batchnorm_example_training_mode", (2, 3, 4, 5), 1e-5, 0.9, True)
    _case("batchnorm_epsilon_training_mode", (2, 3, 4, 5), 1e-2, 0.9, True)
    _case("batchnorm_2d_training_mode", (40, 4), 1e-5, 0.99, True)


if __name__ == "__main__":
    main()
