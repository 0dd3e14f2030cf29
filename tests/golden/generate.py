"""Regenerate the PyTorch golden vectors: ``python tests/golden/generate.py`` (needs torch).

Every case is one .npz beside this script: the inputs, the configuration (as JSON in
``config``) and what torch 2.x computed. Small on purpose: they are committed fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

HERE = Path(__file__).parent
RNG = np.random.default_rng(20261126)


def _bn(dims: int, c: int, **kw: Any) -> torch.nn.modules.batchnorm._BatchNorm:
    cls = {
        2: torch.nn.BatchNorm1d,
        3: torch.nn.BatchNorm1d,
        4: torch.nn.BatchNorm2d,
        5: torch.nn.BatchNorm3d,
    }
    return cls[dims](c, **kw)


def _save(name: str, config: dict[str, Any], **arrays: Any) -> None:
    out = {
        k: (v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
        for k, v in arrays.items()
    }
    np.savez(HERE / f"{name}.npz", config=np.array(json.dumps(config)), **out)


def fits(
    name: str,
    shapes: list[tuple[int, ...]],
    *,
    dtype: str = "float32",
    eval_x: bool = True,
    weight: bool = False,
    **kw: Any,
) -> None:
    """A sequence of train-mode forwards, then one eval forward; every output is kept."""
    c = shapes[0][1]
    bn = _bn(len(shapes[0]), c, dtype=getattr(torch, dtype), **kw)
    arrays: dict[str, Any] = {}
    if weight:
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(RNG.uniform(0.5, 2.0, c).astype(dtype)))
            bn.bias.copy_(torch.from_numpy(RNG.normal(0, 1, c).astype(dtype)))
        arrays.update(weight0=bn.weight, bias0=bn.bias)
    bn.train()
    for i, shape in enumerate(shapes):
        x = (RNG.normal(3.0, 2.0, shape) * (i + 1)).astype(dtype)
        y = bn(torch.from_numpy(x))
        arrays.update({f"x{i}": x, f"y{i}": y})
        if bn.running_mean is not None:
            arrays.update(
                {
                    f"running_mean{i}": bn.running_mean.clone(),
                    f"running_var{i}": bn.running_var.clone(),
                }
            )
    if eval_x:
        bn.eval()
        xe = RNG.normal(3.0, 2.0, shapes[0]).astype(dtype)
        arrays.update(x_eval=xe, y_eval=bn(torch.from_numpy(xe)))
    config = {"num_features": c, "dtype": dtype, "fits": len(shapes), "weight": weight, **kw}
    _save(name, config, **arrays)


def degenerate() -> None:
    """A constant channel, and NaN / Inf under PyTorch's propagate behaviour."""
    x = RNG.normal(0, 1, (6, 3)).astype("float32")
    x[:, 0] = 2.5
    bn = torch.nn.BatchNorm1d(3)
    y = bn(torch.from_numpy(x))
    _save(
        "constant_channel",
        {"num_features": 3, "dtype": "float32", "nan_policy": "propagate"},
        x0=x,
        y0=y,
        running_mean0=bn.running_mean,
        running_var0=bn.running_var,
    )
    x = RNG.normal(0, 1, (6, 3)).astype("float32")
    x[2, 1] = np.nan
    x[4, 2] = np.inf
    bn = torch.nn.BatchNorm1d(3)
    y = bn(torch.from_numpy(x))
    _save(
        "nan_inf_propagate",
        {"num_features": 3, "dtype": "float32", "nan_policy": "propagate"},
        x0=x,
        y0=y,
        running_mean0=bn.running_mean,
        running_var0=bn.running_var,
    )


def backward() -> None:
    """Gradients in train and eval mode with non-trivial weight, for 2-D and 4-D input."""
    for name, shape in (("backward_2d", (10, 4)), ("backward_4d", (3, 4, 5, 2))):
        c = shape[1]
        x = RNG.normal(1.0, 2.0, shape)
        gy = RNG.normal(0, 1, shape)
        w = RNG.uniform(0.5, 2.0, c)
        b = RNG.normal(0, 1, c)
        rm, rv = RNG.normal(0, 1, c), RNG.uniform(0.5, 2.0, c)
        out: dict[str, Any] = {
            "x": x,
            "grad_output": gy,
            "weight": w,
            "bias": b,
            "running_mean": rm,
            "running_var": rv,
        }
        for mode in ("train", "eval"):
            xt = torch.tensor(x, requires_grad=True)
            wt = torch.tensor(w, requires_grad=True)
            bt = torch.tensor(b, requires_grad=True)
            y = torch.nn.functional.batch_norm(
                xt, torch.tensor(rm), torch.tensor(rv), wt, bt, mode == "train", 0.1, 1e-5
            )
            y.backward(torch.tensor(gy))
            out.update(
                {
                    f"{mode}_grad_input": xt.grad,
                    f"{mode}_grad_weight": wt.grad,
                    f"{mode}_grad_bias": bt.grad,
                }
            )
        _save(name, {"num_features": c, "dtype": "float64"}, **out)


def fold() -> None:
    """torch.nn.utils.fusion against a BN layer with non-trivial statistics."""
    c = 4
    rm = torch.tensor(RNG.normal(0, 1, c), dtype=torch.float32)
    rv = torch.tensor(RNG.uniform(0.5, 2.0, c), dtype=torch.float32)
    w = torch.tensor(RNG.uniform(0.5, 2.0, c), dtype=torch.float32)
    b = torch.tensor(RNG.normal(0, 1, c), dtype=torch.float32)
    conv_w = torch.tensor(RNG.normal(0, 1, (c, 3, 3, 3)), dtype=torch.float32)
    conv_b = torch.tensor(RNG.normal(0, 1, c), dtype=torch.float32)
    lin_w = torch.tensor(RNG.normal(0, 1, (c, 5)), dtype=torch.float32)
    fcw, fcb = fuse_conv_bn_weights(conv_w, conv_b, rm, rv, 1e-5, w, b)
    flw, flb = fuse_linear_bn_weights(lin_w, torch.zeros(c), rm, rv, 1e-5, w, b)
    _save(
        "fold",
        {"num_features": c, "dtype": "float32"},
        running_mean=rm,
        running_var=rv,
        weight=w,
        bias=b,
        conv_weight=conv_w,
        conv_bias=conv_b,
        fused_conv_weight=fcw,
        fused_conv_bias=fcb,
        linear_weight=lin_w,
        fused_linear_weight=flw,
        fused_linear_bias=flb,
    )


def main() -> None:
    with torch.no_grad():
        fits("one_fit_2d", [(16, 4)])
        fits("several_fits_3d", [(8, 3, 5), (8, 3, 5), (8, 3, 5)])
        fits("momentum_none_unequal", [(4, 3), (10, 3), (7, 3), (2, 3)], momentum=None)
        fits("eval_weighted_4d", [(4, 3, 5, 5), (2, 3, 5, 5)], weight=True)
        fits("fits_5d", [(2, 3, 2, 3, 4), (3, 3, 2, 3, 4)], momentum=0.3, eps=1e-3)
        fits("float64_2d", [(12, 5), (9, 5)], dtype="float64", weight=True)
        fits("no_affine_2d", [(12, 5), (9, 5)], affine=False)
        fits("untracked_2d", [(12, 5), (9, 5)], track_running_stats=False, weight=True)
        degenerate()
        fold()
    backward()


if __name__ == "__main__":
    main()
