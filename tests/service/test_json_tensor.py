"""Properties of the JSON fast path (``service.json_tensor``): wherever it answers, its array is
bit-identical to the general decoder's and to an independent recomputation (orjson, then
float64, then the session's dtype); it answers every common well-formed body; and it leaves
every body it cannot prove simple to the general decoder (None).

Bodies are written as text, so that number literals, whitespace and member order are the
client's: integers small and past 2^53, exponents, -0, subnormals, huge values, nulls,
booleans, ragged and mixed nesting, duplicate members, a byte order mark.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import bncore
from service import codecs, json_tensor
from service.errors import MalformedBody

DTYPES = st.sampled_from(["float32", "float64"])

# --- number literals, as a client may write them --------------------------------------------

_digits = st.text("0123456789", min_size=1, max_size=25)
_mantissa = st.builds(
    lambda sign, whole, frac: sign + str(int(whole)) + ("." + frac if frac else ""),
    st.sampled_from(["", "-"]),
    _digits,
    st.one_of(st.just(""), _digits),
)
exponent_literals = st.builds(
    lambda m, e, sign, x: f"{m}{e}{sign}{x}",
    _mantissa,
    st.sampled_from(["e", "E"]),
    st.sampled_from(["", "+", "-"]),
    st.integers(0, 330),
)
float_literals = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=-1e-300, max_value=1e-300).map(repr),  # subnormals and tiny
    _mantissa,
    exponent_literals,
)
int_literals = st.one_of(
    st.integers(-(2**53), 2**53),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 2**63, 2**64 - 1, 2**64, 10**30]),
    st.integers(0, 9),
).map(str)
special_literals = st.sampled_from(
    [
        *("-0", "0", "-0.0", "0.0", "0e0", "-0e-0", "5e-324", "2.2250738585072014e-308"),
        *("1e308", "1.7976931348623157e308", "3.4028235e38", "3.4028236e38", "1e39", "-1e39"),
        *("1e400", "16777217", "9007199254740993", "null", "true", "false", '"1"', "[]", "{}"),
    ]
)
common_literals = st.one_of(float_literals, int_literals)
literals = st.one_of(common_literals, special_literals)
spaces = st.sampled_from(["", "", "", " ", "\n", "\t ", "\r\n"])


@st.composite
def nested_text(draw: st.DrawFn, literal: st.SearchStrategy[str], ragged: bool) -> str:
    """A rectangular nested list of ``literal`` (1-4 levels, 1-4 per level) as JSON text; with
    ``ragged``, maybe one row's length changed or one number made a list."""
    dims = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    count = int(np.prod(dims))
    values = draw(st.lists(literal, min_size=count, max_size=count))
    if ragged and draw(st.booleans()):
        at = draw(st.integers(0, count - 1))
        values[at] = draw(st.sampled_from(["[1]", "[]", "[1, 2]", "[[3]]"]))
    sp = draw(spaces)

    def text(level: int, flat: list[str]) -> str:
        if level == len(dims):
            return flat[0]
        step = len(flat) // dims[level]
        parts = [text(level + 1, flat[i * step : (i + 1) * step]) for i in range(dims[level])]
        if ragged and level == len(dims) - 1 and draw(st.integers(0, 9)) == 0:
            parts = parts[:-1] if len(parts) > 1 else parts + parts
        return f"[{sp}" + f"{sp},{sp}".join(parts) + f"{sp}]"

    return text(0, values)


@st.composite
def bodies(draw: st.DrawFn, literal: st.SearchStrategy[str], odd: bool) -> bytes:
    """A JSON tensor body: bare list, ``{"data": ...}``, maybe ``dtype``, or flat + ``shape``;
    with ``odd``, the near misses: ragged, duplicate or unknown members, a byte order mark."""
    data = draw(nested_text(literal, ragged=odd))
    members = [f'"data": {data}']
    form = draw(st.sampled_from(["bare", "object", "shape"]))
    if form == "shape":
        flat = draw(st.lists(literal, min_size=1, max_size=12))
        dims = draw(st.sampled_from([[len(flat)], [1, len(flat)], [len(flat), 1], [-1], [0]]))
        if not odd:
            dims = [len(flat)] if len(flat) % 2 else [2, len(flat) // 2]
        members = [f'"data": [{", ".join(flat)}]', f'"shape": {dims}']
    if draw(st.booleans()):
        names = ["float32", "float64", "float16", "bfloat16"] + (["int8", "[", ""] if odd else [])
        dtype = draw(st.sampled_from(names))
        members.insert(draw(st.integers(0, len(members))), f'"dtype": "{dtype}"')
    if odd and draw(st.booleans()):
        members.insert(
            draw(st.integers(0, len(members))),
            draw(st.sampled_from(['"data": [1]', '"note": "["', '"shape": null', '"x": []'])),
        )
    text = data if form == "bare" else "{" + ", ".join(members) + "}"
    if odd and draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    return text.encode()


# --- the references ---------------------------------------------------------------------------


def recomputed(body: bytes, dtype: str) -> np.ndarray:
    """orjson's values as float64 (each integer and float literal rounded once), then the
    session's dtype: what the fast path claims to give."""
    doc = orjson.loads(body)
    data = doc if isinstance(doc, list) else doc["data"]
    out = np.array(data, dtype=np.float64)
    if isinstance(doc, dict) and doc.get("shape") is not None:
        out = out.reshape(doc["shape"])
    return out.astype(dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def general(body: bytes, dtype: str) -> np.ndarray | Exception:
    try:
        return codecs.decode_json_general(body, dtype)
    except (MalformedBody, bncore.DTypeError) as exc:
        return exc


# --- properties -------------------------------------------------------------------------------


@given(st.one_of(bodies(literals, odd=False), bodies(literals, odd=True)), DTYPES)
@example(b"[[1, 2], [3, [4]]]", "float64")  # as many numbers as the shape, one a list
@example(b"[[[1], [2]], [[[3]], 4]]", "float64")  # as many lists and numbers as the shape
@example(b'{"data": [1], "data": [2, 3]}', "float64")  # orjson keeps the last
@example(b"\xef\xbb\xbf[1.5]", "float32")  # orjson refuses a byte order mark
@example(b"[9007199254740993]", "float32")  # 2^53 + 1: int64 -> float32 rounds once
@example(b"[1, null]", "float64")
@example(b"[1, true]", "float64")
@example(b"[1e39]", "float32")
def test_fast_path_agrees_bit_for_bit_where_it_answers(body: bytes, dtype: str) -> None:
    fast = json_tensor.decode(body, dtype)
    if fast is None:
        return
    reference = general(body, dtype)
    assert isinstance(reference, np.ndarray), reference
    assert same_bits(fast, reference)
    assert same_bits(fast, recomputed(body, dtype))


@given(bodies(common_literals, odd=False), DTYPES)
def test_fast_path_answers_a_rectangular_body_of_numbers_below_2_53(
    body: bytes, dtype: str
) -> None:
    fast = json_tensor.decode(body, dtype)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:  # a literal beyond float64's range
        assert fast is None
        return
    values = np.array(doc if isinstance(doc, list) else doc["data"]).astype(np.float64)
    assert (fast is not None) == bool(np.all(np.abs(values) < 2.0**53))


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.sampled_from([np.float32, np.float64]),
    DTYPES,
    st.data(),
)
def test_what_orjson_writes_of_an_array_takes_the_fast_path(
    dims: list[int], stored: Any, dtype: str, data: st.DataObject
) -> None:
    count = int(np.prod(dims))
    width = 32 if stored is np.float32 else 64
    bound = float(2**53 - 2**29)  # below 2^53, and a float32 too
    elements = st.floats(-bound, bound, width=width)
    x = np.array(data.draw(st.lists(elements, min_size=count, max_size=count)), dtype=stored)
    body = orjson.dumps({"data": x.reshape(dims)}, option=orjson.OPT_SERIALIZE_NUMPY)
    fast = json_tensor.decode(body, dtype)
    assert fast is not None
    assert same_bits(fast, codecs.decode_json_general(body, dtype))
    assert same_bits(codecs.decode_json_tensor(body, dtype), fast)


@pytest.mark.parametrize(
    "body",
    [
        b"[[1, 2], [3]]",
        b"[[1, 2], 3]",
        b"[1, [2]]",
        b"[]",
        b"[[]]",
        b'{"data": [1, 2], "shape": [3]}',
        b'{"data": [1, 2], "shape": [true, 2]}',
        b'{"data": [[1, 2]], "shape": [2]}',
        b'{"data": [1], "dtype": "int8"}',
        b'{"data": [1], "other": 2}',
        b'{"data": "[1]"}',
        b'{"shape": [1]}',
        b"[" * 65 + b"1" + b"]" * 65,
        b"[18446744073709551616]",
        b"[1e400]",
        b"[1]x",
        b"",
    ],
)
def test_fast_path_leaves_what_it_cannot_prove_to_the_general_decoder(body: bytes) -> None:
    assert json_tensor.decode(body, "float32") is None


def test_fast_path_is_used_by_decode_json_tensor_and_its_threads_keep_a_parser() -> None:
    import threading

    body = b'{"data": [[1.5, -0.0], [2, 3e2]], "dtype": "float64"}'
    results: list[np.ndarray | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(json_tensor.decode(body, "float64")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(
        r is not None and same_bits(r, codecs.decode_json_tensor(body, "float64")) for r in results
    )
    assert np.signbit(results[0][0, 1])


def test_a_body_over_the_kept_size_decodes_with_its_own_parser() -> None:
    x = np.arange(200_000, dtype=np.float64).reshape(2000, 100) / 7
    body = orjson.dumps({"data": x}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert len(body) > json_tensor._KEEP_BYTES
    fast = json_tensor.decode(body, "float64")
    assert fast is not None and same_bits(fast, x)
