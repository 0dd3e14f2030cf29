"""The GPU hot loops (``bncore/cuda/bn_kernels.cu``) behind CuPy's ``RawModule``.

Off by default (``enable(True)``, the service's ``BNAAS_CUDA_KERNELS``): until they have been
measured on a GPU, CuPy arrays take the generic ``xp`` path. Each function returns None where
the kernels do not apply (switched off, a host array, float16, a non-contiguous view), and the
caller does the same maths with its array namespace, as with the CPU kernels.

The namespace comes from the arrays (``namespace(x)``): this module never imports CuPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from bncore.backend import Array, is_host, namespace

if TYPE_CHECKING:
    from bncore.moments import Moments

__all__ = ["SOURCE", "Grid", "affine", "enable", "enabled", "moments", "plan", "update"]

#: The kernel source, compiled at run time by NVRTC (and by nvcc in the tests).
SOURCE = Path(__file__).with_name("cuda") / "bn_kernels.cu"

_ROWS_Y = 8  # BN_ROWS_Y in the source
_PLANE_T = 256  # BN_PLANE_T in the source
_FINISH_T = 256
_state = {"enabled": False}


def enable(on: bool = True) -> None:
    """Switch the kernels on or off for this process."""
    _state["enabled"] = bool(on)


def enabled() -> bool:
    """True when CuPy arrays go through these kernels."""
    return _state["enabled"]


@dataclass(frozen=True)
class Grid:
    """Launch geometry for an (a, c, b) array: ``grid``, ``block`` and ``g``, the number of
    partial results per channel that the grid merge folds."""

    grid: tuple[int, int]
    block: tuple[int, int]
    g: int


def plan(a: int, c: int, b: int, sms: int, blocks_per_sm: int = 4) -> Grid:
    """Enough blocks to fill ``sms`` multiprocessors ``blocks_per_sm`` times over, split first
    across channels and then along the rows (each block keeps at least one row)."""
    target = max(1, sms * blocks_per_sm)
    if b == 1:
        cols = math.ceil(c / 32)
        g = max(1, min(math.ceil(target / cols), math.ceil(a / _ROWS_Y)))
        return Grid((cols, g), (32, _ROWS_Y), g)
    g = max(1, min(math.ceil(target / c), a))
    return Grid((c, g), (_PLANE_T, 1), g)


@cache
def _module(xp: ModuleType) -> Any:
    return xp.RawModule(code=SOURCE.read_text(), options=("--std=c++17",))


@cache
def _sms(xp: ModuleType) -> int:
    return int(xp.cuda.Device().attributes["MultiProcessorCount"])


def _applies(x3: Array) -> bool:
    return (
        _state["enabled"]
        and not is_host(namespace(x3))
        and x3.dtype.char in "fd"
        and x3.flags.c_contiguous
        and x3.size > 0
    )


def _suffix(dtype: Any) -> str:
    return "f64" if dtype.char == "d" else "f32"


def moments(x3: Array, omit: bool = False) -> tuple[Array, Array, Array, bool] | None:
    """Per-channel count, mean and M2 (float64, on the device) of a (A, C, B) array, and
    whether every M2 is finite (one flag read: the NaN policy decides with it). ``omit``
    skips NaN values (the 'omit' policy); the counts then differ per channel."""
    if not _applies(x3):
        return None
    xp = namespace(x3)
    a, c, b = x3.shape
    geo = plan(a, c, b, _sms(xp))
    mod = _module(xp)
    parts = xp.empty((3, geo.g, c), dtype=xp.float64)
    count, mean, m2, var = (xp.empty(c, dtype=xp.float64) for _ in range(4))
    flag = xp.zeros(1, dtype=xp.int32)
    suffix = _suffix(x3.dtype)
    if b == 1:
        kernel = mod.get_function(f"moments_rows_{suffix}")
        args: tuple[Any, ...] = (x3, a, c, int(omit), parts[0], parts[1], parts[2])
    else:
        kernel = mod.get_function(f"moments_planes_{suffix}")
        args = (x3, a, c, b, int(omit), parts[0], parts[1], parts[2])
    kernel(geo.grid, geo.block, args)
    finish = mod.get_function("moments_finish")
    blocks = (math.ceil(c / _FINISH_T),)
    finish(
        blocks, (_FINISH_T,), (parts[0], parts[1], parts[2], c, geo.g, count, mean, m2, var, flag)
    )
    return count, mean, m2, not bool(flag.get()[0])


def affine(
    x3: Array, center: Array, scale: Array, offset: Array, check: bool = False
) -> tuple[Array, bool] | None:
    """``(x - center) * scale + offset`` per channel with double intermediates, rounded once to
    x's dtype (the float64 (C,) vectors of ``bncore.batchnorm``); with ``check``, also whether
    every input is finite."""
    if not _applies(x3):
        return None
    xp = namespace(x3)
    a, c, b = x3.shape
    vectors = [xp.ascontiguousarray(v, dtype=xp.float64) for v in (center, scale, offset)]
    y = xp.empty_like(x3)
    flag = xp.zeros(1, dtype=xp.int32)
    geo = plan(a, c, b, _sms(xp))
    mod = _module(xp)
    suffix = _suffix(x3.dtype)
    tail = (*vectors, int(check), flag)
    if b == 1:
        mod.get_function(f"affine_rows_{suffix}")(geo.grid, geo.block, (x3, y, a, c, *tail))
    else:
        mod.get_function(f"affine_planes_{suffix}")(geo.grid, geo.block, (x3, y, a, c, b, *tail))
    return y, not (check and bool(flag.get()[0]))


def update(
    batch: Moments,
    weights: tuple[float, float, bool],
    running_mean: Array | None,
    running_var: Array | None,
    population: Moments,
) -> tuple[Array | None, Array | None, Array, Array, Array] | None:
    """The running EMA ``w_new * stat + w_old * old`` (``BNConfig.ema_weights``: the biased or
    unbiased batch variance) and the population merged with the batch, in one launch; None
    buffers: not tracked. The formulas of ``bncore.batchnorm._update_running``."""
    if not _state["enabled"] or is_host(namespace(batch.mean)):
        return None
    xp = namespace(batch.mean)
    w_new, w_old, biased = weights
    c = int(batch.mean.shape[0])
    dtype = running_mean.dtype if running_mean is not None else xp.dtype(xp.float64)
    rm_out = None if running_mean is None else xp.empty_like(running_mean)
    rv_out = None if running_var is None else xp.empty_like(running_var)
    pc, pm, pm2 = (xp.empty(c, dtype=xp.float64) for _ in range(3))
    kernel = _module(xp).get_function(f"update_{_suffix(dtype)}")
    kernel(
        (math.ceil(c / _FINISH_T),),
        (_FINISH_T,),
        (
            c,
            batch.count,
            batch.mean,
            batch.m2,
            float(w_old),
            float(w_new),
            int(not biased),
            running_mean,
            running_var,
            rm_out,
            rv_out,
            population.count,
            population.mean,
            population.m2,
            pc,
            pm,
            pm2,
        ),
    )
    return rm_out, rv_out, pc, pm, pm2
