"""Type stubs of the C extension bncore._cpu (see _cpu.c)."""

from typing import Any

OPENMP: int  # 1 when built with OpenMP: the *_mt functions then use several threads

def moments_mt(
    x: Any, a: int, c: int, b: int, nthreads: int, mean_out: Any, m2_out: Any
) -> bool: ...
def affine_mt(
    x: Any,
    a: int,
    c: int,
    b: int,
    nthreads: int,
    center: Any,
    scale: Any,
    offset: Any,
    out: Any,
) -> bool: ...
def moments(
    x: Any, a: int, c: int, b: int, row0: int, row1: int, mean_out: Any, m2_out: Any
) -> bool: ...
def affine(
    x: Any,
    a: int,
    c: int,
    b: int,
    row0: int,
    row1: int,
    center: Any,
    scale: Any,
    offset: Any,
    out: Any,
) -> bool: ...
def scale_shift(
    mean: Any, var: Any, eps: float, weight: Any, bias: Any, scale_out: Any, shift_out: Any
) -> None: ...
def update(
    mean: Any,
    m2: Any,
    count: Any,
    w_new: float,
    w_old: float,
    biased: bool,
    rm: Any,
    rv: Any,
    rm_out: Any,
    rv_out: Any,
    pop_count: Any,
    pop_mean: Any,
    pop_m2: Any,
    pop_out: Any,
) -> None: ...
def stats(x: Any, a: int, c: int, b: int, nthreads: int, out: Any) -> bool: ...
def normalize(
    x: Any,
    a: int,
    c: int,
    b: int,
    nthreads: int,
    mean: Any,
    m2: Any,
    count: Any,
    eps: float,
    weight: Any,
    bias: Any,
    out: Any,
) -> bool: ...
def fit_step(
    x: Any,
    a: int,
    c: int,
    b: int,
    nthreads: int,
    eps: float,
    w_new: float,
    w_old: float,
    biased: bool,
    weight: Any,
    bias: Any,
    rm: Any,
    rv: Any,
    pop_count: Any,
    pop_mean: Any,
    pop_m2: Any,
    y_out: Any,
    out: Any,
    rm_out: Any,
    rv_out: Any,
) -> bool: ...
def drift(mean: Any, m2: Any, count: Any, rm: Any, rv: Any, eps: float, out: Any) -> None: ...
def drift_summary(
    kl: Any, shift: Any, ratio: Any, top: int
) -> tuple[float, float, float, float, list[int]]: ...
