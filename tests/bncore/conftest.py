"""Engine fixtures: run numeric tests through the C kernels and through the NumPy fallback."""

from __future__ import annotations

import pytest

from bncore import kernels


@pytest.fixture(params=["c-kernels", "numpy-fallback"])
def engine_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Parametrize a test over both CPU paths (the fallback is what a build without a C
    compiler, or an array the kernels do not take, computes with)."""
    if request.param == "numpy-fallback":
        monkeypatch.setattr(kernels, "_cpu", None)
    elif not kernels.available():
        pytest.fail("bncore._cpu was not built: install with a C compiler (pip install -e .)")
    return str(request.param)
