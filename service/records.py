"""O(C) records of committed changes: what an idempotency receipt keeps to answer a retry
byte for byte, and what the history keeps of each fit.

A record is ``pack(meta, arrays)``: magic, u32 header length, an orjson header (``meta`` plus
the arrays' names, dtypes and lengths), then the arrays' raw little-endian bytes. Raw bytes
keep every float exact, so an answer rendered from a record equals the first one.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

import bncore
from service.stores.base import CorruptRecord, HistoryEntry, HistoryItem

HostArray = np.ndarray[Any, Any]
_MAGIC = b"BNR\x01"
_HEAD_LEN = struct.Struct("<I")
_F64 = np.dtype(np.float64)
_LITTLE = sys.byteorder == "little"


def pack(meta: dict[str, Any], arrays: dict[str, HostArray | None]) -> bytes:
    """One record: JSON-able ``meta`` and host (C,) arrays (None ones are left out)."""
    return _packed(orjson.dumps(meta), arrays)


def _packed(meta: bytes, arrays: dict[str, HostArray | None]) -> bytes:
    """``pack`` with ``meta`` already serialized (a fit packs its history entry twice, full
    and brief, around one ``meta``): the same bytes as orjson writes for the whole header."""
    table: list[list[Any]] = []
    parts: list[Any] = []
    for k, v in arrays.items():
        if v is None:
            continue
        if _LITTLE and type(v) is np.ndarray and v.dtype is _F64 and v.flags.c_contiguous:
            # A fit's native float64 (C,) rows: bytes.join reads them as they are, no copy.
            table.append([k, "<f8", v.size])
            parts.append(v)
            continue
        v = np.ascontiguousarray(v)
        v = v.astype(v.dtype.newbyteorder("<"), copy=False)
        table.append([k, v.dtype.str, int(v.size)])
        parts.append(v.tobytes())
    head = b'{"meta":%s,"arrays":%s}' % (meta, orjson.dumps(table))
    return b"".join([_MAGIC, _HEAD_LEN.pack(len(head)), head, *parts])


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, HostArray]]:
    """Inverse of ``pack``; ``CorruptRecord`` (503) on anything that does not parse."""
    try:
        if data[:4] != _MAGIC:
            raise ValueError("bad magic")
        (hlen,) = struct.unpack_from("<I", data, 4)
        head = orjson.loads(data[8 : 8 + hlen])
        offset = 8 + hlen
        arrays: dict[str, HostArray] = {}
        for name, dtype, size in head["arrays"]:
            dt = np.dtype(dtype)
            arrays[name] = np.frombuffer(data, dt, int(size), offset).astype(dt.newbyteorder("="))
            offset += int(size) * dt.itemsize
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} trailing byte(s)")
        meta: dict[str, Any] = head["meta"]
        return meta, arrays
    except (ValueError, TypeError, KeyError, struct.error, orjson.JSONDecodeError) as exc:
        raise CorruptRecord(f"a stored record cannot be read: {exc}") from None


def iso_time(ts: float) -> str:
    """Seconds since the epoch as ISO-8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, init=False)
class FitRecord:
    """One committed fit, O(C): the batch moments, the weight/bias/eps that normalized it
    (so a retry recomputes its output from its own body), its drift against the running
    statistics before it, and the version and ``num_batches_tracked`` it produced.

    ``count`` (values per channel, the largest under ``nan_policy='omit'``) and ``var`` (the
    batch's biased variance per channel) are derived from ``batch`` once, when it is built;
    a caller that knows the count (every channel counts the same unless values are omitted)
    passes it."""

    version: int
    num_batches_tracked: int
    time: float
    batch: bncore.Moments  # host float64 (C,)
    weight: HostArray | None
    bias: HostArray | None
    eps: float
    drift: bncore.Drift | None  # host float64 (C,) each
    summary: dict[str, Any] | None
    flags: list[str]
    count: int = field(init=False, compare=False, repr=False)
    var: HostArray = field(init=False, compare=False, repr=False)

    def __init__(
        self,
        version: int,
        num_batches_tracked: int,
        time: float,
        batch: bncore.Moments,
        weight: HostArray | None,
        bias: HostArray | None,
        eps: float,
        drift: bncore.Drift | None,
        summary: dict[str, Any] | None,
        flags: list[str],
        *,
        count: int | None = None,
    ) -> None:
        # The instance dict filled directly (as bncore.BNState): every fit builds one, and a
        # frozen __init__ pays an object.__setattr__ per field.
        d = self.__dict__
        d["version"], d["num_batches_tracked"], d["time"] = version, num_batches_tracked, time
        d["batch"], d["weight"], d["bias"], d["eps"] = batch, weight, bias, eps
        d["drift"], d["summary"], d["flags"] = drift, summary, flags
        if count is None:
            count = int(batch.count.max()) if batch.count.size else 0
        d["count"], d["var"] = count, batch.m2 / batch.count

    def _meta(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "num_batches_tracked": self.num_batches_tracked,
            "time": self.time,
            "count": self.count,
            "summary": self.summary,
            "flags": self.flags,
        }

    def _drift_arrays(self) -> dict[str, HostArray | None]:
        d = self.drift
        return {
            "mean_shift": None if d is None else d.mean_shift,
            "log_var_ratio": None if d is None else d.log_var_ratio,
            "kl": None if d is None else d.kl,
        }

    def to_bytes(self) -> bytes:
        """The receipt payload of this fit."""
        b = self.batch
        arrays = {"count": b.count, "mean": b.mean, "m2": b.m2, "weight": self.weight}
        arrays |= {"bias": self.bias, **self._drift_arrays()}
        return pack({**self._meta(), "eps": self.eps}, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> FitRecord:
        meta, a = unpack(data)
        try:
            drift = None
            if "kl" in a:
                drift = bncore.Drift(a["mean_shift"], a["log_var_ratio"], a["kl"])
            return cls(
                version=int(meta["version"]),
                num_batches_tracked=int(meta["num_batches_tracked"]),
                time=float(meta["time"]),
                batch=bncore.Moments(a["count"], a["mean"], a["m2"]),
                weight=a.get("weight"),
                bias=a.get("bias"),
                eps=float(meta["eps"]),
                drift=drift,
                summary=meta["summary"],
                flags=list(meta["flags"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"a stored fit record cannot be read: {exc}") from None

    def history_entry(self) -> HistoryEntry:
        """The history entry of this fit, full (per-channel values) and brief (summary only)."""
        meta = orjson.dumps(self._meta())  # once for both
        full = _packed(meta, {"mean": self.batch.mean, "var": self.var, **self._drift_arrays()})
        brief = _packed(meta, {})
        return HistoryEntry(self.version, self.time, full, brief, self.batch.mean.size)

    def drift_json(self) -> dict[str, Any] | None:
        """The fit answer's ``drift`` member (None when the session tracks no running stats)."""
        d = self.drift
        if d is None:
            return None
        return {
            "mean_shift": d.mean_shift,
            "log_var_ratio": d.log_var_ratio,
            "kl": d.kl,
            "summary": self.summary,
            "flags": self.flags,
        }


def history_json(item: HistoryItem) -> dict[str, Any]:
    """One entry of ``GET /v1/sessions/{id}/history`` (arrays stay NumPy: orjson writes them)."""
    meta, a = unpack(item.data)
    try:
        doc: dict[str, Any] = {
            "version": int(meta["version"]),
            "num_batches_tracked": int(meta["num_batches_tracked"]),
            "time": iso_time(float(meta["time"])),
            "count": int(meta["count"]),
            "summary": meta["summary"],
            "flags": list(meta["flags"]),
            "full": item.full,
        }
        if item.full:
            doc["mean"], doc["var"] = a["mean"], a["var"]
            doc["drift"] = (
                {k: a[k] for k in ("mean_shift", "log_var_ratio", "kl")} if "kl" in a else None
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord(f"a stored history entry cannot be read: {exc}") from None
    return doc
