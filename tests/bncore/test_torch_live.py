"""Live comparison with torch.nn.BatchNorm*d on random shapes, dtypes and fit sequences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import bncore as bn

# Every test here runs through the C kernels and through the NumPy fallback.
pytestmark = pytest.mark.usefixtures("engine_path")

torch = pytest.importorskip("torch")

MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def random_shape(rng: np.random.Generator, ndim: int, c: int) -> tuple[int, ...]:
    return (int(rng.integers(2, 9)), c, *(int(rng.integers(1, 5)) for _ in range(ndim - 2)))


@pytest.mark.parametrize("seed", range(12))
def test_random_fit_sequences_match_torch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(2, 6))
    c = int(rng.integers(1, 7))
    dtype = ("float32", "float64")[seed % 2]
    momentum: Any = (0.1, None, 0.5, 1.0)[seed % 4]
    eps = float(10.0 ** rng.uniform(-6, -2))
    module = getattr(torch.nn, MODULES[ndim])(
        c, eps=eps, momentum=momentum, dtype=getattr(torch, dtype)
    )
    with torch.no_grad():
        module.weight.uniform_(0.5, 2.0)
        module.bias.normal_()
    state = bn.initial_state(
        bn.BNConfig(c, eps=eps, momentum=momentum, dtype=dtype),
        weight=module.weight.detach().numpy(),
        bias=module.bias.detach().numpy(),
    )
    rtol = 5e-6 if dtype == "float32" else 1e-12
    for _ in range(int(rng.integers(1, 6))):
        x = (
            rng.normal(rng.uniform(-5, 5), rng.uniform(0.1, 4), random_shape(rng, ndim, c))
        ).astype(dtype)
        if int(np.prod(x.shape)) // c < 2:
            continue
        module.train()
        expected = module(torch.from_numpy(x)).detach().numpy()
        state, result = bn.fit(state, x)
        np.testing.assert_allclose(result.output, expected, rtol=rtol, atol=rtol * 10)
        np.testing.assert_allclose(
            state.running_mean, module.running_mean.numpy(), rtol=rtol, atol=rtol
        )
        np.testing.assert_allclose(
            state.running_var, module.running_var.numpy(), rtol=rtol, atol=rtol
        )
        assert state.num_batches_tracked == int(module.num_batches_tracked)
    module.eval()
    x = rng.normal(0, 2, random_shape(rng, ndim, c)).astype(dtype)
    expected = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(bn.transform(state, x), expected, rtol=rtol, atol=rtol * 10)


def test_channels_last_matches_torch_on_permuted_input() -> None:
    rng = np.random.default_rng(7)
    nhwc = rng.normal(2, 3, (4, 5, 6, 3)).astype("float32")
    module = torch.nn.BatchNorm2d(3)
    expected = (
        module(torch.from_numpy(nhwc).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    )
    state, result = bn.fit(bn.initial_state(bn.BNConfig(3, channel_axis=-1)), nhwc)
    np.testing.assert_allclose(result.output, expected, rtol=5e-6, atol=5e-6)
    np.testing.assert_allclose(state.running_var, module.running_var.numpy(), rtol=5e-6)


def test_batch_of_one_raises_like_torch() -> None:
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.zeros(1, 3))
    with pytest.raises(bn.BatchSizeError, match="Expected more than 1 value per channel"):
        bn.fit(bn.initial_state(bn.BNConfig(3)), np.zeros((1, 3), "float32"))


def test_float32_large_mean_variance_beats_torch_against_float64_truth() -> None:
    """Mean 1e4, std 1e-2 in float32: within 1e-6 of the float64 truth of the same values."""
    rng = np.random.default_rng(3)
    x = (1e4 + 1e-2 * rng.standard_normal((4096, 8))).astype("float32")
    truth = x.astype("float64").var(axis=0)
    _, result = bn.fit(bn.initial_state(bn.BNConfig(8, momentum=1.0)), x, output=False)
    np.testing.assert_allclose(result.batch.var, truth, rtol=1e-6)
    module = torch.nn.BatchNorm1d(8, momentum=1.0)
    module(torch.from_numpy(x))
    torch_var = module.running_var.numpy().astype("float64") * (4095 / 4096)
    ours = np.abs(result.batch.var / truth - 1).max()
    theirs = np.abs(torch_var / truth - 1).max()
    assert ours < theirs
