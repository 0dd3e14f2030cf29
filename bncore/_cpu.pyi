"""Type stubs of the C extension bncore._cpu (see _cpu.c)."""

from typing import Any

def moments(
    x: Any, a: int, c: int, b: int, row0: int, row1: int, mean_out: Any, m2_out: Any
) -> bool: ...
def affine(
    x: Any, a: int, c: int, b: int, row0: int, row1: int, scale: Any, shift: Any, out: Any
) -> bool: ...
def scale_shift(
    mean: Any, var: Any, eps: float, weight: Any, bias: Any, scale_out: Any, shift_out: Any
) -> None: ...
def update(
    mean: Any,
    m2: Any,
    count: Any,
    f: float,
    rm: Any,
    rv: Any,
    rm_out: Any,
    rv_out: Any,
    pop_count: Any,
    pop_mean: Any,
    pop_m2: Any,
    count_out: Any,
    mean_out: Any,
    m2_out: Any,
) -> None: ...
