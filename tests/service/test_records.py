"""O(C) records: what a receipt and the history keep of a fit, byte for byte."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

import bncore
from service.records import FitRecord, history_json, pack, unpack
from service.stores.base import HistoryItem

C = 4


def _record(drift: bool = True, count: int | None = None) -> FitRecord:
    rng = np.random.default_rng(0)
    batch = bncore.Moments(np.full(C, 8.0), rng.normal(size=C), rng.uniform(1, 2, C))
    d = bncore.Drift(rng.normal(size=C), rng.normal(size=C), rng.uniform(size=C))
    return FitRecord(
        version=3,
        num_batches_tracked=2,
        time=1.7e9,
        batch=batch,
        weight=np.ones(C, np.float32),
        bias=np.zeros(C, np.float32),
        eps=1e-5,
        drift=d if drift else None,
        summary={"max_kl": 0.5, "top_kl_channels": [1, 0]} if drift else None,
        flags=["kl"] if drift else [],
        count=count,
    )


def _reference_pack(meta: dict[str, object], arrays: dict[str, np.ndarray | None]) -> bytes:
    """The record format as documented: magic, u32 header length, orjson header, raw arrays."""
    present = {k: np.ascontiguousarray(v, v.dtype.newbyteorder("<")) for k, v in arrays.items()
               if v is not None}  # fmt: skip
    head = orjson.dumps(
        {"meta": meta, "arrays": [[k, v.dtype.str, int(v.size)] for k, v in present.items()]}
    )
    return (
        b"BNR\x01"
        + len(head).to_bytes(4, "little")
        + head
        + b"".join(v.tobytes() for v in present.values())
    )


@pytest.mark.parametrize("dtype", ["<f8", ">f8", "<f4", "<i8"])
def test_pack_writes_the_documented_format_for_any_array(dtype: str) -> None:
    arrays = {"a": np.arange(3, dtype=dtype), "skipped": None, "b": np.arange(6.0)[::2]}
    meta = {"version": 1, "x": [1.5, None]}
    data = pack(meta, arrays)
    assert data == _reference_pack(meta, arrays)
    found_meta, found = unpack(data)
    assert found_meta == meta and list(found) == ["a", "b"]
    np.testing.assert_array_equal(found["a"], arrays["a"])


@pytest.mark.parametrize("drift", [True, False])
def test_history_entry_is_the_fit_packed_full_and_brief(drift: bool) -> None:
    rec = _record(drift)
    entry = rec.history_entry()
    meta = {
        "version": 3,
        "num_batches_tracked": 2,
        "time": 1.7e9,
        "count": 8,
        "summary": rec.summary,
        "flags": rec.flags,
    }
    arrays: dict[str, np.ndarray | None] = {"mean": rec.batch.mean, "var": rec.var}
    if drift:
        assert rec.drift is not None
        arrays |= {"mean_shift": rec.drift.mean_shift, "log_var_ratio": rec.drift.log_var_ratio}
        arrays["kl"] = rec.drift.kl
    assert entry.full == _reference_pack(meta, arrays)
    assert entry.brief == _reference_pack(meta, {})
    assert (entry.version, entry.num_features) == (3, C)


def test_history_entry_of_rows_that_are_views_is_packed_the_same() -> None:
    rec = _record()
    block = np.stack([rec.batch.count, rec.batch.mean, rec.batch.m2], axis=1)  # strided rows
    strided = FitRecord(
        rec.version, rec.num_batches_tracked, rec.time,
        bncore.Moments(block[:, 0], block[:, 1], block[:, 2]),
        rec.weight, rec.bias, rec.eps, rec.drift, rec.summary, rec.flags,
    )  # fmt: skip
    assert strided.history_entry().full == rec.history_entry().full


def test_history_json_reads_a_full_entry_back() -> None:
    rec = _record()
    doc = history_json(HistoryItem(3, rec.history_entry().full, True))
    assert doc["count"] == 8 and doc["flags"] == ["kl"]
    np.testing.assert_array_equal(doc["var"], rec.batch.m2 / rec.batch.count)


def test_a_given_count_is_the_record_count_and_the_default_is_the_largest() -> None:
    assert _record(count=8).count == 8
    rec = _record()
    omitted = FitRecord(
        rec.version, rec.num_batches_tracked, rec.time,
        bncore.Moments(np.array([3.0, 8.0, 5.0, 2.0]), rec.batch.mean, rec.batch.m2),
        rec.weight, rec.bias, rec.eps, rec.drift, rec.summary, rec.flags,
    )  # fmt: skip
    assert omitted.count == 8


def test_a_receipt_payload_reads_back_as_the_same_record() -> None:
    rec = _record()
    back = FitRecord.from_bytes(rec.to_bytes())
    assert (back.version, back.count, back.flags, back.eps) == (3, 8, ["kl"], 1e-5)
    assert back.var.tobytes() == rec.var.tobytes()
