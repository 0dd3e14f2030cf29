"""Coverage-guided fuzzing of every request decoder (atheris; on demand, not collected by pytest).

    pip install atheris
    python bench/fuzz/seeds.py fuzz-corpus
    python bench/fuzz/fuzz_decoders.py -max_total_time=300 fuzz-corpus/

The first input byte picks the decoder and the session dtype; the rest is the body. The
property is the test suite's (tests/service/test_fuzz_decoders.py): an array of the session's
dtype or the project's own 4xx error; for JSON tensors, also the same bits from the fast path
(service/json_tensor.py) as from the general decoder wherever the fast path answers. An
exception of any other kind, or a record on the ``bnaas.decode`` logger (``decode_boundary``
caught something unexpected), is a crash that atheris reports with the input that caused it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import atheris

with atheris.instrument_imports():
    import numpy as np

    import bncore
    from service import codecs, json_tensor, v2codec
    from service.errors import ServiceError


class DecoderBug(Exception):
    """``decode_boundary`` logged an exception the decoder did not expect."""


class _Raise(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise DecoderBug(record.getMessage())


NAMES = ("data", "grad_output", "weight", "bias")
DECODERS: list[Callable[[bytes, str], Any]] = [
    lambda body, dt: codecs.decode_npy(body, dt),
    lambda body, dt: codecs.decode_json_tensor(body, dt),
    lambda body, dt: codecs.decode_named(body, codecs.SAFETENSORS, NAMES, dt),
    lambda body, dt: codecs.decode_named(body, codecs.JSON, NAMES, dt),
    lambda body, dt: v2codec.decode_infer(body, None, dt),
    # Binary V2: the JSON length is the first two bytes of the body.
    lambda body, dt: v2codec.decode_infer(body[2:], str(int.from_bytes(body[:2], "little")), dt),
    lambda body, dt: codecs.decompress(body, "gzip", 1 << 16, 10),
]


def one_input(data: bytes) -> None:
    if not data:
        return
    pick, body = data[0], data[1:]
    dtype = "float64" if pick & 0x80 else "float32"
    decoder = (pick & 0x7F) % len(DECODERS)
    if decoder == 1:
        same_as_general(body, dtype)
    try:
        out = DECODERS[decoder](body, dtype)
    except (ServiceError, bncore.BNError):
        return
    if isinstance(out, bytes):
        return
    arrays = out.values() if isinstance(out, dict) else [getattr(out, "x", out)]
    for arr in arrays:
        if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype):
            raise AssertionError(f"decoder returned {type(arr)} {getattr(arr, 'dtype', '')}")


def same_as_general(body: bytes, dtype: str) -> None:
    """Where the JSON fast path answers, the general decoder gives the same bits."""
    fast = json_tensor.decode(body, dtype)
    if fast is None:
        return
    slow = codecs.decode_json_general(body, dtype)
    if (fast.dtype, fast.shape, fast.tobytes()) != (slow.dtype, slow.shape, slow.tobytes()):
        raise AssertionError(f"fast path and general decoder differ: {fast!r} {slow!r}")


def main() -> None:
    log = logging.getLogger("bnaas.decode")
    log.addHandler(_Raise())
    log.propagate = False
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
