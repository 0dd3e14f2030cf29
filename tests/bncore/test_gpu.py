"""CuPy backend: the same results as NumPy, on the device. Skipped without a GPU."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import bncore as bn
from bncore import cuda_kernels

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
try:
    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # no driver: cupy raises its own CUDA error types
    HAVE_GPU = False
if not HAVE_GPU:
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.fixture(params=["generic-cupy", "cuda-kernels"])
def gpu_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test through CuPy's generic operations and through bncore's own kernels."""
    cuda_kernels.enable(request.param == "cuda-kernels")
    yield str(request.param)
    cuda_kernels.enable(False)


@pytest.mark.parametrize("shape", [(64, 8), (4, 8, 5, 5), (3, 8, 2, 2, 2), (1000, 8), (2, 8, 300)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_and_transform_on_gpu_match_numpy(
    shape: tuple[int, ...], dtype: str, gpu_path: str
) -> None:
    x = np.random.default_rng(0).normal(2, 3, shape).astype(dtype)
    config = bn.BNConfig(8, dtype=dtype)  # type: ignore[arg-type]
    cpu, cpu_r = bn.fit(bn.initial_state(config), x)
    gpu, gpu_r = bn.fit(bn.initial_state(config, xp=cupy), cupy.asarray(x))
    assert isinstance(gpu_r.output, cupy.ndarray)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(bn.to_host(gpu_r.output), cpu_r.output, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(bn.to_host(gpu.running_var), cpu.running_var, rtol=rtol)
    y = bn.transform(gpu, cupy.asarray(x))
    np.testing.assert_allclose(bn.to_host(y), bn.transform(cpu, x), rtol=rtol, atol=rtol)


def test_select_auto_picks_cupy() -> None:
    assert bn.select("auto").name == "cupy"


def test_state_moves_between_host_and_device() -> None:
    s = bn.initial_state(bn.BNConfig(4), xp=cupy)
    data = bn.state_to_bytes(s)
    back = bn.state_from_bytes(data, xp=cupy)
    assert isinstance(back.running_var, cupy.ndarray)


def test_backward_and_fold_on_gpu_match_numpy() -> None:
    rng = np.random.default_rng(1)
    x, g = rng.normal(0, 1, (16, 8)), rng.normal(0, 1, (16, 8))
    config = bn.BNConfig(8, dtype="float64")
    _, cpu = bn.backward(bn.initial_state(config), x, g)
    _, gpu = bn.backward(bn.initial_state(config, xp=cupy), cupy.asarray(x), cupy.asarray(g))
    np.testing.assert_allclose(bn.to_host(gpu.grad_input), cpu.grad_input, rtol=1e-10, atol=1e-12)
    w = rng.normal(0, 1, (8, 3))
    fw_cpu, _ = bn.fold(bn.initial_state(config), w)
    fw_gpu, _ = bn.fold(bn.initial_state(config, xp=cupy), cupy.asarray(w))
    np.testing.assert_allclose(bn.to_host(fw_gpu), fw_cpu, rtol=1e-12)


@pytest.mark.parametrize("shape", [(65536, 8), (64, 8, 32, 32)])
@pytest.mark.parametrize(("mean", "std"), [(1e6, 1.0), (1e4, 1e-2)])
def test_float32_outputs_on_gpu_are_float64_quality(
    shape: tuple[int, ...], mean: float, std: float, gpu_path: str
) -> None:
    x = np.random.default_rng(2).normal(mean, std, shape).astype(np.float32)
    x64 = x.astype(np.float64)
    axes = (0, *range(2, len(shape)))
    mu, var = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    expected = (x64 - mu) / np.sqrt(var + 1e-5)
    _, r = bn.fit(bn.initial_state(bn.BNConfig(8), xp=cupy), cupy.asarray(x))
    assert r.output is not None
    assert np.abs(bn.to_host(r.output) - expected).max() <= 1e-6


def test_omit_and_reject_policies_on_gpu(gpu_path: str) -> None:
    x = np.random.default_rng(3).normal(0, 1, (50, 8)).astype(np.float32)
    x[3, 2] = np.nan
    omit = bn.initial_state(bn.BNConfig(8, nan_policy="omit"), xp=cupy)
    cpu, _ = bn.fit(bn.initial_state(bn.BNConfig(8, nan_policy="omit")), x)
    gpu, _ = bn.fit(omit, cupy.asarray(x))
    np.testing.assert_allclose(bn.to_host(gpu.population.count), cpu.population.count)
    np.testing.assert_allclose(bn.to_host(gpu.running_mean), cpu.running_mean, rtol=1e-6)
    reject = bn.initial_state(bn.BNConfig(8), xp=cupy)
    with pytest.raises(bn.NonFiniteError) as info:
        bn.fit(reject, cupy.asarray(x))
    assert info.value.channels == [2]
    with pytest.raises(bn.NonFiniteError):
        bn.transform(reject, cupy.asarray(x))
