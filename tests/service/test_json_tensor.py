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
from tests.service import json_texts
from tests.service.json_texts import bodies, common_literals, literals

DTYPES = st.sampled_from(["float32", "float64"])

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
    bound = float(2**53 - 2**29)  # below 2^53, and a float32 too
    elements = st.floats(-bound, bound, width=32 if stored is np.float32 else 64)
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


def test_threads_decode_at_once_each_with_its_own_parser() -> None:
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
    reference = codecs.decode_json_general(body, "float64")
    assert len(results) == 4
    assert all(r is not None and same_bits(r, reference) for r in results)
    assert np.signbit(reference[0, 1])


def test_a_body_over_the_kept_size_decodes_with_its_own_parser() -> None:
    x = np.arange(200_000, dtype=np.float64).reshape(2000, 100) / 7
    body = orjson.dumps({"data": x}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert len(body) > json_tensor._KEEP_BYTES
    fast = json_tensor.decode(body, "float64")
    assert fast is not None and same_bits(fast, x)


# --- a tensor inside a larger document (V2 infer requests) ------------------------------------

V2_PATH = ("inputs", 0, "data")


@st.composite
def v2_texts(draw: st.DrawFn) -> bytes:
    """A V2 infer request as text, its data a tensor body's data, with members around it that
    may hold lists, texts with "[" and duplicate names."""
    data = draw(json_texts.nested_text(literals, ragged=draw(st.booleans())))
    spec = [
        '"name": "INPUT"',
        f'"datatype": "{draw(st.sampled_from(["FP32", "FP64", "FP16", "INT8"]))}"',
        f'"shape": {draw(st.lists(st.integers(0, 5), max_size=3))}',
        f'"data": {data}',
    ]
    extra = ['"id": "a[1]"', '"id": "\\u005b"', '"parameters": {"mode": "fit", "x": [[1], []]}']
    extra += ['"outputs": [{"name": "OUTPUT"}]', '"inputs": []', '"parameters": {"a": 1, "a": 2}']
    members = [f'"inputs": [{{{", ".join(draw(st.permutations(spec)))}}}]']
    members += draw(st.lists(st.sampled_from(extra), max_size=3))
    return ("{" + ", ".join(draw(st.permutations(members))) + "}").encode()


@given(v2_texts(), DTYPES)
@example(b'{"inputs": [{"data": [[1, 2], [3, [4]]]}], "id": "\\u005b"}', "float64")
@example(b'{"inputs": [{"data": [1, 2]}], "inputs": [{"data": [3]}]}', "float64")
def test_a_tensor_in_a_document_agrees_with_orjson_and_the_general_decoder(
    text: bytes, dtype: str
) -> None:
    fast = json_tensor.loads_with_tensor(text, V2_PATH, dtype)
    if fast is None:
        return
    doc, tensor = fast
    expected = orjson.loads(text)
    data = expected["inputs"][0].pop("data")
    assert same_bits(tensor, codecs.json_array(data, "input data", dtype=dtype))
    assert doc["inputs"][0].pop("data") is tensor
    assert doc == expected


def test_a_v2_request_as_orjson_writes_it_takes_the_fast_path() -> None:
    x = np.linspace(-3, 3, 12, dtype=np.float32)
    spec = {"name": "INPUT", "datatype": "FP32", "shape": [3, 4], "data": x}
    text = orjson.dumps({"inputs": [spec], "id": "r1"}, option=orjson.OPT_SERIALIZE_NUMPY)
    fast = json_tensor.loads_with_tensor(text, V2_PATH, "float32")
    assert fast is not None and same_bits(fast[1], x)
    assert fast[0] == {"inputs": [{**spec, "data": fast[1]}], "id": "r1"}


def test_a_parser_whose_document_is_still_held_is_replaced() -> None:
    held = json_tensor._parse(b"[1, 2]")  # as an exception's traceback could keep it
    fast = json_tensor.decode(b"[[3.5, 4]]", "float64")
    assert fast is not None and same_bits(fast, np.array([[3.5, 4.0]]))
    assert len(held) == 2
