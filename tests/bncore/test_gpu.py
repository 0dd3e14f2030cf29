"""CuPy backend: the same results as NumPy, on the device. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import bncore as bn

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
try:
    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # no driver: cupy raises its own CUDA error types
    HAVE_GPU = False
if not HAVE_GPU:
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.mark.parametrize("shape", [(64, 8), (4, 8, 5, 5), (3, 8, 2, 2, 2)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_and_transform_on_gpu_match_numpy(shape: tuple[int, ...], dtype: str) -> None:
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
