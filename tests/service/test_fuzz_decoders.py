"""Property: every decoder, fed near-valid bodies, returns arrays of the session's dtype or
raises the project's own 4xx error, and never reaches ``decode_boundary``'s bug path.

The strategies build bodies one mutation away from valid (a header field of the wrong type,
a size off by a few bytes, a dtype the format defines but we refuse), where parsers break.
Budget: the hypothesis profile in tests/conftest.py (CI: 60 examples per test).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import bncore
from service import codecs, deps, v2codec
from service.errors import ENGINE_ERRORS, ServiceError
from tests.service import json_texts
from tests.service.wire import npy_header, npy_raw, safetensors_raw

DTYPES = st.sampled_from(["float32", "float64"])
ints = st.one_of(
    st.integers(0, 6),
    st.integers(-3, -1),
    st.sampled_from([1 << 31, 1 << 63, (1 << 64) - 1, 1 << 64, 10**30]),
)
junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.floats(), st.just({}), st.just([])
)
shapes = st.lists(st.one_of(ints, junk), max_size=5)
numbers = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(-(10**40), 10**40),
    st.none(),
    st.booleans(),
    st.sampled_from([1e39, -1e39, 1e308, 5e-324, 0.0, -0.0]),
)


class DecoderBug(AssertionError):
    pass


class _Raise(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise DecoderBug(record.getMessage())


@contextmanager
def no_decoder_bug() -> Iterator[None]:
    """Fail on a ``decode_boundary`` log record: an exception the decoder did not expect."""
    log = logging.getLogger("bnaas.decode")
    handler = _Raise()
    log.addHandler(handler)
    old, log.propagate = log.propagate, False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = old


def is_4xx(exc: BaseException) -> bool:
    if isinstance(exc, ServiceError):
        return 400 <= exc.status < 500
    if isinstance(exc, bncore.BNError):
        return all(400 <= status < 500 for status, _, _ in ENGINE_ERRORS.values())
    return False


def check(decode: Callable[[], Any], dtype: str) -> None:
    """The property, for one decoder call."""
    with no_decoder_bug():
        try:
            out = decode()
        except Exception as exc:
            if isinstance(exc, DecoderBug) or not is_4xx(exc):
                raise
            return
    arrays = out.values() if isinstance(out, dict) else [getattr(out, "x", out)]
    for arr in arrays:
        assert isinstance(arr, np.ndarray)
        assert arr.dtype == np.dtype(dtype), arr.dtype


# --- .npy -----------------------------------------------------------------------------------

descrs = st.one_of(
    st.sampled_from(["<f4", "<f8", "<f2", ">f4", "|f1", "<f3", "<z9", "<i4", "|b1", "<c8", "|O"]),
    st.sampled_from(["<M8[s]", "|V4", "<U3", "S2", "<f16", "<f12", "b", "?"]),
    st.text(max_size=6),
)


@st.composite
def npy_bodies(draw: st.DrawFn) -> bytes:
    dims = draw(
        st.lists(st.one_of(ints, st.sampled_from(["True", "2 3", "-0", "1.5"])), max_size=4)
    )
    shape = "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"
    if draw(st.booleans()):
        shape = draw(st.sampled_from(["(2 3,)", "()", "(,)", "[2, 3]", "(2, 3", "{}", "None"]))
    fortran = draw(st.sampled_from(["False", "True", "0", "'x'"]))
    header = npy_header(draw(descrs), shape, fortran)
    if draw(st.booleans()):  # the order numpy does not write: numpy's own parser
        header = header.replace("{'descr'", "{'shape': (1,), 'descr'")
    size = draw(st.integers(0, 96))
    body = npy_raw(
        header,
        bytes(draw(st.binary(min_size=size, max_size=size))),
        draw(st.sampled_from([1, 2, 3])),
    )
    if draw(st.booleans()) and body:
        cut = draw(st.integers(0, len(body)))
        body = body[:cut]
    return body


@given(npy_bodies(), DTYPES)
def test_npy_decoder_returns_the_session_dtype_or_a_4xx(body: bytes, dtype: str) -> None:
    check(lambda: codecs.decode_npy(body, dtype), dtype)


@given(
    st.sampled_from(["<f2", "<f4", "<f8", ">f4", ">f8"]),
    st.lists(st.integers(0, 4), max_size=4),
    DTYPES,
)
def test_npy_of_any_float_dtype_decodes_to_the_session_dtype(
    descr: str, shape: list[int], dtype: str
) -> None:
    a = np.arange(int(np.prod(shape)), dtype=descr).reshape(shape)
    out = codecs.decode_npy(codecs.encode_npy(a) if descr[0] == "<" else _npy_big(a), dtype)
    np.testing.assert_array_equal(out, a)
    assert out.dtype == np.dtype(dtype)


def _npy_big(a: np.ndarray) -> bytes:
    dims = ", ".join(str(d) for d in a.shape) + ("," if a.ndim == 1 else "")
    return npy_raw(npy_header(a.dtype.str, f"({dims})"), a.tobytes())


# --- safetensors ----------------------------------------------------------------------------

st_dtypes = st.one_of(
    st.sampled_from(
        ["F32", "F64", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "I8", "U8", "I16", "U16"]
    ),
    st.sampled_from(["I32", "U32", "I64", "U64", "BOOL", "C64", "F4", "F6_E2M3", "F6_E3M2"]),
    junk,
)


@st.composite
def safetensors_bodies(draw: st.DrawFn) -> bytes:
    header: dict[str, Any] = {}
    offset = 0
    for name in draw(
        st.lists(
            st.sampled_from(["weight", "bias", "data", "grad_output", "x"]), max_size=3, unique=True
        )
    ):
        shape = draw(st.one_of(st.lists(st.integers(0, 3), max_size=3), shapes, junk))
        size = draw(st.integers(0, 40))
        begin = offset + draw(st.sampled_from([0, 0, 0, -1, 1]))
        offsets: Any = draw(
            st.sampled_from(
                [[begin, begin + size], [begin], "x", [begin + size, begin], [0, 1 << 64]]
            )
        )
        header[name] = {"dtype": draw(st_dtypes), "shape": shape, "data_offsets": offsets}
        if draw(st.integers(0, 9)) == 0:
            header[name] = draw(junk)
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), junk, st.just({"a": 1})))
    data = draw(st.binary(min_size=offset, max_size=offset + 4))
    body = safetensors_raw(header, data)
    if draw(st.integers(0, 5)) == 0:
        body = draw(st.binary(max_size=8)) + body[8:]
    return body


@given(
    safetensors_bodies(), DTYPES, st.sampled_from(["application/x-safetensors", "application/json"])
)
def test_named_tensor_decoder_returns_the_session_dtype_or_a_4xx(
    body: bytes, dtype: str, media: str
) -> None:
    names = ("weight", "bias", "data", "grad_output")
    check(lambda: codecs.decode_named(body, media, names, dtype), dtype)


@given(safetensors_bodies())
def test_safetensors_decoder_returns_arrays_or_a_4xx(body: bytes) -> None:
    with no_decoder_bug():
        try:
            tensors, meta = codecs.decode_safetensors(body)
        except (ServiceError, bncore.BNError) as exc:
            if not is_4xx(exc):
                raise
            return
    assert all(isinstance(v, np.ndarray) for v in tensors.values())
    assert all(isinstance(v, str) for v in meta.values())


# --- JSON tensors ---------------------------------------------------------------------------

nested = st.recursive(
    st.lists(numbers, max_size=4),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=24,
)
json_docs = st.one_of(
    nested,
    st.fixed_dictionaries(
        {"data": st.one_of(nested, junk)},
        optional={
            "shape": st.one_of(shapes, junk, st.just([0, (1 << 64) - 1])),
            "dtype": st.one_of(st.sampled_from(["float16", "bfloat16", "float64", "int8"]), junk),
            "grad_output": nested,
            "weight": nested,
            "bias": nested,
        },
    ),
    junk,
)


@given(json_docs, DTYPES)
def test_json_tensor_decoder_returns_the_session_dtype_or_a_4xx(doc: Any, dtype: str) -> None:
    body = json.dumps(doc, default=str).encode()
    check(lambda: codecs.decode_json_tensor(body, dtype), dtype)
    check(
        lambda: codecs.decode_named(
            body, "application/json", ("data", "grad_output", "weight", "bias"), dtype
        ),
        dtype,
    )


@given(st.binary(max_size=64), DTYPES)
def test_json_decoder_on_arbitrary_bytes(body: bytes, dtype: str) -> None:
    check(lambda: codecs.decode_json_tensor(body, dtype), dtype)


@given(json_texts.bodies(json_texts.literals, odd=True), DTYPES, st.data())
def test_json_text_bodies_decode_to_the_session_dtype_or_a_4xx(
    body: bytes, dtype: str, data: st.DataObject
) -> None:
    """Bodies as a client writes them (the fast path's territory), and each cut short or with
    one byte changed."""
    at = data.draw(st.integers(0, len(body) - 1))
    byte = bytes([data.draw(st.integers(0, 255))])
    for text in (body, body[:at], body[:at] + byte + body[at + 1 :]):
        check(lambda text=text: codecs.decode_json_tensor(text, dtype), dtype)  # type: ignore[misc]


# --- V2 -------------------------------------------------------------------------------------

v2_datatypes = st.one_of(st.sampled_from([*v2codec.DATATYPES, "BYTES", "FP8"]), junk)


@st.composite
def v2_requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    datatype = draw(v2_datatypes)
    shape = draw(st.one_of(st.lists(st.integers(0, 4), max_size=3), shapes, junk))
    spec: dict[str, Any] = {
        "name": draw(st.sampled_from(["INPUT", "INPUT", "OUTPUT", 3])),
        "datatype": datatype,
        "shape": shape,
    }
    binary = draw(st.booleans())
    raw = b""
    if binary:
        size = draw(st.integers(0, 48))
        raw = draw(st.binary(min_size=size, max_size=size))
        spec["parameters"] = {
            "binary_data_size": draw(st.sampled_from([size, size, size + 1, -1, True, "4"]))
        }
    else:
        spec["data"] = draw(st.one_of(nested, junk))
    doc: dict[str, Any] = {"inputs": draw(st.sampled_from([[spec], [spec], [spec, spec], spec]))}
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.one_of(
                st.fixed_dictionaries({"mode": st.sampled_from(["fit", "transform", 1, None])}),
                st.just({"binary_data_output": True}),
                st.just({"sequence_id": 1}),
                junk,
            )
        )
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.one_of(st.just([{"name": "OUTPUT", "parameters": {"binary_data": True}}]), junk)
        )
    head = json.dumps(doc).encode()
    length: str | None = str(len(head)) if binary else None
    if draw(st.integers(0, 4)) == 0:
        length = draw(
            st.sampled_from(
                ["1_2", " 12", "+5", "٣", "-1", "", "99999999999999999999", str(len(head) + 1)]
            )
        )
    return head + raw, length


@given(v2_requests(), DTYPES)
def test_v2_decoder_returns_the_session_dtype_or_a_4xx(
    req: tuple[bytes, str | None], dtype: str
) -> None:
    body, length = req
    check(lambda: v2codec.decode_infer(body, length, dtype), dtype)


def _outcome(body: bytes, length: str | None, dtype: str) -> tuple[Any, ...]:
    try:
        r = v2codec.decode_infer(body, length, dtype)
    except Exception as exc:
        if not is_4xx(exc):
            raise
        return ("refused", type(exc), str(exc))
    return (r.id, r.mode, r.binary_output, r.x.dtype, r.x.shape, r.x.tobytes())


@st.composite
def v2_binary_requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """Binary V2 requests, mostly well-formed (the sizes agree), some a byte off."""
    name = draw(st.sampled_from(["FP32", "FP64", "FP16", "BF16", "INT32"]))
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    size = math.prod(shape) * v2codec.DATATYPES[name].itemsize
    spec = {
        "name": "INPUT",
        "datatype": name,
        "shape": shape,
        "parameters": {"binary_data_size": size + draw(st.sampled_from([0, 0, 0, 1]))},
    }
    doc: dict[str, Any] = {"inputs": [spec]}
    doc.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": st.sampled_from(["a", 3]),
                    "parameters": st.sampled_from(
                        [{"mode": "fit"}, {"binary_data_output": True}, {"sequence_id": 1}]
                    ),
                    "outputs": st.just([{"name": "OUTPUT", "parameters": {"binary_data": True}}]),
                },
            )
        )
    )
    head = json.dumps(doc).encode()
    raw = draw(st.binary(min_size=size, max_size=size + draw(st.sampled_from([0, 0, 0, 1]))))
    return head + raw, str(len(head))


@given(v2_binary_requests(), DTYPES, st.sampled_from(["", "0" * 18, " "]))
def test_v2_decoder_answers_a_header_seen_before_as_the_first_time(
    req: tuple[bytes, str | None], dtype: str, pad: str
) -> None:
    """decode_infer keeps what it checked of a binary request's JSON header: a request with
    the same header, its length written otherwise or a body a byte longer or shorter is
    answered as it would be the first time."""
    body, length = req
    assert length is not None
    v2codec._PLANS.clear()
    first = _outcome(body, length, dtype)
    fresh = {
        other: _outcome(b, n, dtype)
        for other in range(3)
        for b, n in [_variant(body, length, pad, other)]
    }
    v2codec._PLANS.clear()
    _outcome(body, length, dtype)  # seen now (kept when it decoded)
    assert _outcome(body, length, dtype) == first
    for other in range(3):
        b, n = _variant(body, length, pad, other)
        assert _outcome(b, n, dtype) == fresh[other]


def _variant(body: bytes, length: str, pad: str, which: int) -> tuple[bytes, str]:
    return [(body, pad + length), (body + b"\0", length), (body[:-1], length)][which]


# --- Content-Encoding -----------------------------------------------------------------------


@given(st.binary(max_size=64), st.sampled_from(["gzip", "deflate", "x-gzip", "br", "identity", ""]))
def test_decompress_returns_bytes_or_a_4xx(body: bytes, encoding: str) -> None:
    import gzip

    for data in (body, gzip.compress(body) + body[:3]):
        try:
            out = codecs.decompress(data, encoding, 1 << 16, 10)
        except ServiceError as exc:
            if not 400 <= exc.status < 500:
                raise
        else:
            assert isinstance(out, bytes)


# --- headers --------------------------------------------------------------------------------

header_text = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.sampled_from(['"3"', 'W/"4"', "*", '"²"', '"1_0"', '""', "5", '"9999999999999999999"']),
        max_size=3,
    ).map(", ".join),
)


@given(header_text)
def test_if_match_parses_to_versions_or_a_400(value: str) -> None:
    try:
        parsed = deps.parse_if_match(value)
    except ServiceError as exc:
        if exc.status != 400:
            raise
        return
    versions = (
        parsed if isinstance(parsed, frozenset) else {parsed} if parsed is not None else set()
    )
    assert all(isinstance(v, int) and 0 <= v < 1 << 63 for v in versions)


@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(
            st.sampled_from(
                [
                    "application/json;q=0",
                    "*/*",
                    "application/x-npy;q=0.5",
                    "application/*;q=nan",
                    "text/csv",
                    ";q=1",
                    "*/*;q=0",
                ]
            ),
            max_size=3,
        ).map(", ".join),
    )
)
def test_negotiate_answers_an_offered_type_or_406(accept: str) -> None:
    try:
        chosen = codecs.negotiate(accept, codecs.JSON, codecs.TENSOR_TYPES)
    except ServiceError as exc:
        if exc.status != 406:
            raise
        return
    assert chosen in codecs.TENSOR_TYPES
