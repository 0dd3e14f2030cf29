"""Wire formats and negotiation, unit level."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest

import bncore
from service import codecs
from service.errors import BodyTooLarge, MalformedBody, NotAcceptable, UnsupportedMediaType
from tests.service.conftest import npy


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", ">f4", ">f8"])
@pytest.mark.parametrize("target", ["float32", "float64"])
def test_npy_decodes_as_numpy_saved_it_in_the_session_dtype(dtype: str, target: str) -> None:
    a = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    b = codecs.decode_npy(npy(a), target)
    np.testing.assert_array_equal(b, a)
    assert b.dtype == np.dtype(target)


def test_npy_fortran_order_is_accepted() -> None:
    a = np.asfortranarray(np.arange(12, dtype="f4").reshape(3, 4))
    np.testing.assert_array_equal(codecs.decode_npy(npy(a), "float32"), a)


def test_npy_decode_is_zero_copy() -> None:
    body = npy(np.ones((4, 3), "f4"))
    assert codecs.decode_npy(body, "float32").base is not None


def test_encode_npy_round_trips_through_numpy() -> None:
    a = np.random.default_rng(0).normal(0, 1, (5, 3)).astype("f4")
    np.testing.assert_array_equal(np.load(io.BytesIO(codecs.encode_npy(a))), a)


@pytest.mark.parametrize("shape", [(32, 64), (5,), (2, 3, 4, 5, 6), (0, 3), ()])
def test_encode_npy_is_byte_identical_to_numpy_save(shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(0).normal(0, 1, shape).astype("f4")
    assert codecs.encode_npy(a) == npy(a)


def test_npy_header_seen_before_still_checks_the_data_length() -> None:
    body = npy(np.ones((4, 3), "f4"))
    codecs.decode_npy(body, "float32")  # the header is now known
    with pytest.raises(MalformedBody, match="header promises 48"):
        codecs.decode_npy(body[:-4], "float32")
    with pytest.raises(MalformedBody, match="header promises 48"):
        codecs.decode_npy(body + bytes(4), "float32")


def test_npy_header_seen_before_decodes_each_body_as_its_own() -> None:
    a, b = np.zeros((2, 3), "f8"), np.arange(6, dtype="f8").reshape(2, 3)
    np.testing.assert_array_equal(codecs.decode_npy(npy(a), "float64"), a)
    np.testing.assert_array_equal(codecs.decode_npy(npy(b), "float64"), b)
    assert codecs.decode_npy(npy(b), "float32").dtype == np.float32


def test_npy_in_a_bytearray_decodes_as_from_bytes() -> None:
    body = npy(np.arange(6, dtype="f4").reshape(2, 3))
    codecs.decode_npy(body, "float32")  # the header is now known
    np.testing.assert_array_equal(
        codecs.decode_npy(bytearray(body), "float32"), codecs.decode_npy(body, "float32")
    )


def test_npy_refused_header_is_refused_again() -> None:
    body = npy(np.zeros(3, "i4"))
    for _ in range(2):
        with pytest.raises(bncore.DTypeError):
            codecs.decode_npy(body, "float32")


def test_encode_npy_of_a_shape_seen_before_is_still_byte_identical_to_numpy_save() -> None:
    for dtype in ("f4", "f8", "<f4", "f4"):
        a = np.random.default_rng(0).normal(0, 1, (3, 2)).astype(dtype)
        assert codecs.encode_npy(a) == npy(a)
    assert codecs.encode_npy(np.zeros((3, 2), ">f8")) == npy(np.zeros((3, 2), "<f8"))


def test_npy_header_numpy_did_not_write_uses_the_safe_parser() -> None:
    text = b"{'shape': (2, 3), 'fortran_order': False, 'descr': '<f8'}"
    header = text + b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(48)
    assert codecs.decode_npy(body, "float64").shape == (2, 3)


def test_npy_with_pickled_objects_is_refused() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MalformedBody, match="pickle"):
        codecs.decode_npy(buf.getvalue(), "float32")


def test_npy_int_is_a_dtype_error() -> None:
    with pytest.raises(bncore.DTypeError):
        codecs.decode_npy(npy(np.zeros(3, "i4")), "float32")


def test_npy_huge_header_is_refused() -> None:
    body = b"\x93NUMPY\x02\x00" + (200_000).to_bytes(4, "little") + b" " * 200_000
    with pytest.raises(MalformedBody):
        codecs.decode_npy(body, "float32")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/x-npy", "application/x-npy"),
        ("application/x-npy;q=0.1, application/json", "application/json"),
        ("text/html, */*;q=0.1", "application/json"),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert codecs.negotiate(accept, "application/json", codecs.TENSOR_TYPES) == expected


def test_negotiate_refuses_what_it_cannot_offer() -> None:
    with pytest.raises(NotAcceptable):
        codecs.negotiate("text/csv", "application/json", codecs.TENSOR_TYPES)
    with pytest.raises(NotAcceptable):
        codecs.negotiate("application/json;q=0", "application/json", codecs.TENSOR_TYPES)


def test_content_type_ignores_parameters_and_case() -> None:
    assert (
        codecs.content_type("Application/JSON; charset=utf-8", codecs.TENSOR_TYPES)
        == "application/json"
    )
    with pytest.raises(UnsupportedMediaType, match="no Content-Type"):
        codecs.content_type(None, codecs.TENSOR_TYPES)


def test_decompress_refuses_unknown_encodings_and_garbage() -> None:
    with pytest.raises(UnsupportedMediaType):
        codecs.decompress(b"x", "br", 10)
    with pytest.raises(MalformedBody):
        codecs.decompress(b"not gzip", "gzip", 100)
    with pytest.raises(BodyTooLarge):
        codecs.decompress(gzip.compress(b"\0" * 1000), "gzip", 100)
    with pytest.raises(MalformedBody, match="truncated"):
        codecs.decompress(gzip.compress(b"\0" * 1000)[:-12], "gzip", 10_000)


def test_json_null_is_nan() -> None:
    a = codecs.json_array([[1, None]], "data", dtype="float32")
    assert np.isnan(a[0, 1])


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json;q=0, */*", "application/x-npy"),
        ("application/*;q=0.5, application/x-npy;q=0.2", "application/json"),
        ("*/*;q=0, application/x-npy", "application/x-npy"),
        ("application/json;q=nan, application/x-npy;q=0.1", "application/x-npy"),
    ],
)
def test_negotiate_takes_each_types_most_specific_range(accept: str, expected: str) -> None:
    assert codecs.negotiate(accept, "application/json", codecs.TENSOR_TYPES) == expected


def test_decompress_refuses_trailing_junk_and_joins_gzip_members() -> None:
    with pytest.raises(MalformedBody, match="trailing"):
        codecs.decompress(gzip.compress(b"abc") + b"\0", "gzip", 100)
    assert codecs.decompress(gzip.compress(b"ab") + gzip.compress(b"c"), "gzip", 100) == b"abc"


def test_decompress_ratio_bound_spares_small_bodies() -> None:
    small = gzip.compress(b"\0" * 500_000)  # over 100 times, but under the 1 MiB floor
    assert len(codecs.decompress(small, "gzip", 1 << 30, 100)) == 500_000
    with pytest.raises(BodyTooLarge, match="100 times"):
        codecs.decompress(gzip.compress(b"\0" * (4 << 20)), "gzip", 1 << 30, 100)


def test_json_array_refuses_booleans_and_out_of_range_values() -> None:
    with pytest.raises(bncore.DTypeError, match="boolean"):
        codecs.json_array([[1.5, True]], "data", dtype="float32")
    with pytest.raises(bncore.DTypeError, match="range"):
        codecs.json_array([[1e39, 1.0]], "data", dtype="float32")
    assert codecs.json_array([[1e39, 1.0]], "data", dtype="float64")[0, 0] == 1e39


@pytest.mark.parametrize(
    ("body", "maybe"),
    [
        (b'{"data": [1, 2.5, null]}', False),
        (b'{"data": [true]}', True),
        (b"[[1, false]]", True),
        (b'{"dtype": "float32", "data": [1]}', False),
        (b'{"t": "' + b"t" * 100 + b'", "data": [1]}', False),  # past the quick tries
        (b'{"t": "' + b"t" * 100 + b'", "data": [true]}', True),
        (b'{"f": "' + b"f" * 100 + b'", "data": [false]}', True),
        (b'{"note": "true"}', True),  # in a string: only asks for the exact scan
    ],
)
def test_bools_in_finds_every_true_and_false_text(body: bytes, maybe: bool) -> None:
    assert codecs.bools_in(body) is maybe
