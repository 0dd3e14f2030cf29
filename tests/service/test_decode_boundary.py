"""Issue 7's decoder cases through HTTP: each was a 500 (or a wrong answer) before the one
decode boundary and the one dtype rule (service/dtypes.py)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import NPY, create, from_npy, npy
from tests.service.wire import npy_header, npy_raw, safetensors_of, v2_binary, v2_json

ST = "application/x-safetensors"
X = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0], [7.0, 9.0, 10.0], [2.0, 0.0, 1.0]], np.float32)


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(Settings(store="memory://", device="cpu", max_body_bytes=1 << 22))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def version(client: TestClient, sid: str) -> int:
    return int(client.get(f"/v1/sessions/{sid}").json()["version"])


# --- .npy header: every one of these was a TypeError/ValueError (500) -----------------------

BAD_NPY = {
    "descr <f3": npy_raw(npy_header("<f3", "(4, 3)"), bytes(36)),
    "descr <z9": npy_raw(npy_header("<z9", "(4, 3)"), bytes(36)),
    "shape (2 3,)": npy_raw(npy_header("<f4", "(2 3,)"), bytes(24)),
    "negative dim": npy_raw(npy_header("<f4", "(-4, -3)"), bytes(48)),
    "boolean dim": npy_raw(npy_header("<f4", "(True, 3)"), bytes(12)),
    "huge dim, zero size": npy_raw(npy_header("<f4", "(0, 99999999999999999999)")),
    "65 dims": npy_raw(npy_header("<f4", "(" + "1, " * 65 + ")")),
    "subarray descr": npy_raw("{'descr': ('<f4', (2,)), 'fortran_order': False, 'shape': (2,)}"),
}


@pytest.mark.parametrize("body", BAD_NPY.values(), ids=BAD_NPY.keys())
@pytest.mark.parametrize("route", ["fit", "transform"])
def test_malformed_npy_header_is_a_4xx_problem(client: TestClient, route: str, body: bytes) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/{route}", content=body, headers={"content-type": NPY})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert version(client, sid) == 1


# --- JSON shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [[0, 18446744073709551615], [0, 1 << 63], [1] * 65, [0] * 100], ids=str
)
def test_json_shape_out_of_numpys_range_is_400(client: TestClient, shape: list[int]) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/transform", json={"data": [], "shape": shape})
    assert r.status_code == 400, r.text
    assert "shape" in r.json()["detail"]


# --- V2 datatype and shape of the wrong JSON type -------------------------------------------


@pytest.mark.parametrize("datatype", [[], {}, None, 5, "FP128"], ids=str)
def test_v2_datatype_that_is_not_a_name_is_400(client: TestClient, datatype: object) -> None:
    sid = create(client)
    r = client.post(f"/v2/models/{sid}/infer", content=v2_json(datatype, [4, 3], X.tolist()))
    assert r.status_code == 400, r.text
    assert "datatype" in r.json()["error"]


@pytest.mark.parametrize(
    "shape", [{}, [[4], 3], [4, "3"], [0, 18446744073709551615], [1] * 65, None], ids=str
)
def test_v2_shape_that_is_not_a_shape_is_400(client: TestClient, shape: object) -> None:
    sid = create(client)
    r = client.post(f"/v2/models/{sid}/infer", content=v2_json("FP32", shape, X.tolist()))
    assert r.status_code == 400, r.text
    r = client.post(f"/v2/models/{sid}/infer", content=v2_binary("FP32", shape, X.tobytes())[0])
    assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    ("shape", "data"), [([0, 18446744073709551615], []), ([1] * 65, [1.0]), ([0, 1 << 63], [])]
)
def test_v2_shape_numpy_cannot_hold_is_400(
    client: TestClient, shape: list[int], data: list[float]
) -> None:
    sid = create(client)
    r = client.post(f"/v2/models/{sid}/infer", content=v2_json("FP32", shape, data))
    assert r.status_code == 400, r.text
    r = client.post(f"/v2/models/{sid}/infer", content=v2_binary("FP32", shape, b"")[0])
    assert r.status_code == 400, r.text


def test_v2_header_length_with_underscores_is_400(client: TestClient) -> None:
    sid = create(client)
    body, headers = v2_binary("FP32", [4, 3], X.tobytes())
    length = headers["Inference-Header-Content-Length"]
    spelled = f"{length[0]}_{length[1:]}"
    r = client.post(
        f"/v2/models/{sid}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": spelled},
    )
    assert r.status_code == 400, r.text
    assert "Inference-Header-Content-Length" in r.json()["error"]


# --- safetensors: every dtype the format defines --------------------------------------------


def _bf16(values: np.ndarray) -> bytes:
    return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()


def test_safetensors_bf16_tensors_are_widened_for_backward(client: TestClient) -> None:
    sid = create(client)
    x = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0]], np.float32)  # exact in bfloat16
    g = np.ones_like(x)
    body = safetensors_of(
        {"data": ("BF16", [2, 3], _bf16(x)), "grad_output": ("BF16", [2, 3], _bf16(g))}
    )
    r = client.post(f"/v1/sessions/{sid}/backward", content=body, headers={"content-type": ST})
    assert r.status_code == 200, r.text
    grads = safetensors.numpy.load(r.content)
    assert grads["grad_input"].dtype == np.float32
    np.testing.assert_allclose(grads["grad_input"], 0, atol=1e-6)  # dL/dy = 1: no gradient


@pytest.mark.parametrize(("kind", "one"), [("F8_E4M3", 0x38), ("F8_E5M2", 0x3C)])
def test_safetensors_float8_weight_folds(client: TestClient, kind: str, one: int) -> None:
    sid = create(client)
    body = safetensors_of({"weight": (kind, [3, 2], bytes([one]) * 6)})
    r = client.post(f"/v1/sessions/{sid}/fold", content=body, headers={"content-type": ST})
    assert r.status_code == 200, r.text
    w = safetensors.numpy.load(r.content)["weight"]
    np.testing.assert_allclose(w, np.full((3, 2), 1 / np.sqrt(1 + 1e-5)), rtol=1e-6)
    assert w.dtype == np.float32


@pytest.mark.parametrize(
    ("kind", "size"),
    [("I32", 4), ("U8", 1), ("I64", 8), ("U16", 2), ("BOOL", 1), ("C64", 8), ("F4", 1)],
)
def test_safetensors_non_float_tensor_is_422_naming_its_dtype(
    client: TestClient, kind: str, size: int
) -> None:
    sid = create(client)
    body = safetensors_of({"weight": (kind, [3, 2], bytes(6 * size))})
    r = client.post(f"/v1/sessions/{sid}/fold", content=body, headers={"content-type": ST})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "not accepted" in detail and ("F32" in detail or "floating-point" in detail)


def test_safetensors_float8_tables_match_torch() -> None:
    torch = pytest.importorskip("torch")
    from service.safetensors_codec import _F8

    codes = torch.arange(256, dtype=torch.uint8)
    for kind, tdt in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        expected = codes.view(tdt).float().numpy()
        np.testing.assert_array_equal(_F8[kind], expected)


# --- the one dtype rule ---------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["<f2", "<f8", ">f4", ">f8"])
def test_npy_of_another_float_dtype_is_answered_in_the_session_dtype(
    client: TestClient, sent: str
) -> None:
    sid = create(client)
    r = client.post(
        f"/v1/sessions/{sid}/transform", content=npy(X.astype(sent)), headers={"content-type": NPY}
    )
    assert r.status_code == 200, r.text
    assert from_npy(r.content).dtype == np.float32


def test_npy_float64_beyond_float32_range_is_422(client: TestClient) -> None:
    sid = create(client, nan_policy="propagate")
    x = X.astype("f8")
    x[0, 0] = 1e39
    r = client.post(f"/v1/sessions/{sid}/fit", content=npy(x), headers={"content-type": NPY})
    assert r.status_code == 422
    assert "range" in r.json()["detail"]
    assert version(client, sid) == 1


def test_json_dtype_member_does_not_change_the_answer_dtype(client: TestClient) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/transform", json={"data": X.tolist(), "dtype": "float64"})
    assert r.status_code == 200
    assert r.json()["dtype"] == "float32"


def test_json_boolean_is_not_counted_as_one(client: TestClient) -> None:
    sid = create(client)
    r = client.post(
        f"/v1/sessions/{sid}/fit",
        content=b'{"data": [[1, 2, 3], [1, true, 3]]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert "boolean" in r.json()["detail"]
    assert version(client, sid) == 1


def test_json_integer_beyond_the_dtype_range_is_422(client: TestClient) -> None:
    sid = create(client, nan_policy="propagate")
    body = b'{"data": [[1, 2, 3], [1, 1' + b"0" * 39 + b", 3]]}"
    r = client.post(
        f"/v1/sessions/{sid}/fit", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "range" in r.json()["detail"]
    assert version(client, sid) == 1


def test_json_integer_above_2_64_is_rounded_like_any_number(client: TestClient) -> None:
    sid = create(client, dtype="float64", nan_policy="propagate")
    body = b'{"data": [[1, 2, 3], [100000000000000000000, 2, 3]]}'  # JSON.stringify(1e20)
    r = client.post(
        f"/v1/sessions/{sid}/fit",
        content=body,
        headers={"content-type": "application/json"},
        params={"output": "false"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["batch"]["mean"][0] == pytest.approx(5e19)


def test_v2_fp64_binary_is_answered_in_fp32_for_a_float32_session(client: TestClient) -> None:
    sid = create(client)
    body, headers = v2_binary("FP64", [4, 3], X.astype("<f8").tobytes())
    r = client.post(f"/v2/models/{sid}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["datatype"] == "FP32"


@pytest.mark.parametrize("datatype", ["INT32", "BOOL", "UINT8"])
def test_v2_integer_input_is_400_naming_the_datatype(client: TestClient, datatype: str) -> None:
    sid = create(client)
    size = {"INT32": 4, "BOOL": 1, "UINT8": 1}[datatype]
    body, headers = v2_binary(datatype, [4, 3], bytes(12 * size))
    r = client.post(f"/v2/models/{sid}/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert datatype in r.json()["error"]


def test_v2_bf16_binary_is_accepted(client: TestClient) -> None:
    sid = create(client)
    body, headers = v2_binary("BF16", [4, 3], _bf16(X))
    r = client.post(f"/v2/models/{sid}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text


# --- If-Match -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag", ['"²"'.encode("latin-1"), '"' + "9" * 5000 + '"', '"3" "4"', '"-1"', '"1_0"', '""']
)
def test_if_match_that_is_not_an_etag_list_is_400(client: TestClient, tag: str | bytes) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()}, headers={"If-Match": tag})
    assert r.status_code == 400, r.text
    assert version(client, sid) == 1


def test_if_match_list_matches_any_of_its_tags(client: TestClient) -> None:
    sid = create(client)
    fit = f"/v1/sessions/{sid}/fit"
    assert (
        client.post(fit, json={"data": X.tolist()}, headers={"If-Match": '"3", "4"'}).status_code
        == 412
    )
    r = client.post(fit, json={"data": X.tolist()}, headers={"If-Match": '"7", "1"'})
    assert r.status_code == 200, r.text
    assert version(client, sid) == 2


# --- negotiation ----------------------------------------------------------------------------


def test_q_zero_json_with_anything_else_does_not_answer_json(client: TestClient) -> None:
    sid = create(client)
    r = client.post(
        f"/v1/sessions/{sid}/transform",
        json={"data": X.tolist()},
        headers={"Accept": "application/json;q=0, */*"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == NPY


def test_negotiated_answers_vary_on_accept(client: TestClient) -> None:
    sid = create(client)
    body = {"data": X.tolist()}
    w = {"weight": [[1.0], [2.0], [3.0]]}
    for method, path, doc in (
        ("POST", "transform", body),
        ("POST", "fit", body),
        ("POST", "backward", {**body, "grad_output": X.tolist()}),
        ("POST", "fold", w),
        ("GET", "stats", None),
    ):
        r = client.request(method, f"/v1/sessions/{sid}/{path}", json=doc)
        assert r.status_code == 200, (path, r.text)
        assert "accept" in r.headers["vary"].lower(), path


# --- Content-Encoding -----------------------------------------------------------------------


def test_gzip_with_trailing_junk_is_400(client: TestClient) -> None:
    sid = create(client)
    body = gzip.compress(npy(X)) + b"junk"
    r = client.post(
        f"/v1/sessions/{sid}/fit",
        content=body,
        headers={"content-type": NPY, "content-encoding": "gzip"},
    )
    assert r.status_code == 400, r.text
    assert "trailing" in r.json()["detail"]
    assert version(client, sid) == 1


def test_gzip_of_two_members_is_one_body(client: TestClient) -> None:
    sid = create(client)
    raw = npy(X)
    body = gzip.compress(raw[:50]) + gzip.compress(raw[50:])
    r = client.post(
        f"/v1/sessions/{sid}/transform",
        content=body,
        headers={"content-type": NPY, "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text


def test_gzip_beyond_the_inflate_ratio_is_413() -> None:
    settings = Settings(
        store="memory://", device="cpu", max_body_bytes=64 << 20, max_inflate_ratio=10
    )
    with TestClient(create_app(settings)) as client:
        sid = create(client)
        bomb = gzip.compress(b"\0" * (8 << 20))  # ~8 KiB that inflate 1000 times
        r = client.post(
            f"/v1/sessions/{sid}/transform",
            content=bomb,
            headers={"content-type": NPY, "content-encoding": "gzip"},
        )
        assert r.status_code == 413, r.text
        assert "10 times" in r.json()["detail"]
