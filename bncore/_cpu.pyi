"""Type stubs of the C extension bncore._cpu (see _cpu.c)."""

from typing import Any

def moments(
    x: Any, a: int, c: int, b: int, row0: int, row1: int, mean_out: Any, m2_out: Any
) -> None: ...
def affine(
    x: Any, a: int, c: int, b: int, row0: int, row1: int, scale: Any, shift: Any, out: Any
) -> bool: ...
