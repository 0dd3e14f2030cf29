"""The GPU kernels' host side, checked without a GPU: the source compiles with nvcc for the
architectures we target, launch plans cover every value, and the switch is off by default.
Their numbers are checked on a GPU by tests/bncore/test_gpu.py (skipped here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import bncore as bn
from bncore import cuda_kernels
from tests.tools import require


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_source_compiles_with_nvcc_without_warnings(arch: str, tmp_path: Path) -> None:
    nvcc = require("nvcc")
    out = tmp_path / f"bn_{arch}.cubin"
    done = subprocess.run(
        [
            nvcc,
            "-cubin",
            f"-arch={arch}",
            "-Werror",
            "all-warnings",
            "-o",
            str(out),
            str(cuda_kernels.SOURCE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    symbols = out.read_bytes()
    for kernel in (
        "moments_rows_f32",
        "moments_planes_f64",
        "moments_finish",
        "affine_rows_f32",
        "affine_planes_f64",
        "update_f32",
    ):
        assert kernel.encode() in symbols  # extern "C": the names CuPy looks up


@pytest.mark.parametrize(
    ("a", "c", "b"),
    [
        (65536, 512, 1),
        (4096, 256, 1),
        (256, 64, 1),
        (3, 5, 1),
        (1, 1, 1),
        (32, 64, 3136),
        (1, 3, 7),
        (2, 1000, 49),
    ],
)
def test_launch_plan_covers_every_channel_and_row(a: int, c: int, b: int) -> None:
    geo = cuda_kernels.plan(a, c, b, sms=132)
    if b == 1:
        cols, g = geo.grid
        assert cols * geo.block[0] >= c  # every channel has a thread column
        assert g == geo.g and 1 <= g <= max(1, -(-a // geo.block[1]))  # no block without rows
    else:
        assert geo.grid[0] == c  # one block column per channel plane
        assert 1 <= geo.g == geo.grid[1] <= a
    assert geo.grid[0] * geo.grid[1] >= min(132, c if b > 1 else -(-c // 32))


def test_kernels_are_off_by_default_and_skip_host_arrays() -> None:
    assert cuda_kernels.enabled() is False
    x3 = np.ones((4, 3, 1), np.float32)
    try:
        cuda_kernels.enable(True)
        assert cuda_kernels.moments(x3) is None  # a NumPy array: the C or NumPy path runs
        assert cuda_kernels.affine(x3, np.zeros(3), np.ones(3), np.zeros(3)) is None
        batch = bn.Moments(np.full(3, 4.0), np.zeros(3), np.ones(3))
        assert cuda_kernels.update(batch, (0.1, 0.9, False), None, None, batch) is None
        _, r = bn.fit(bn.initial_state(bn.BNConfig(3)), np.arange(12.0).reshape(4, 3))
        assert r.output is not None  # the host path still runs with the switch on
    finally:
        cuda_kernels.enable(False)
