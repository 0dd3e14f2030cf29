"""Hand-built wire bodies for the decoder tests: npy with any header text, safetensors with any
header, V2 requests; no library that would refuse to write what a hostile client sends (stdlib
json, which writes integers of any size, and NaN)."""

from __future__ import annotations

import json
from typing import Any


def npy_raw(header: str | bytes, data: bytes = b"", major: int = 1) -> bytes:
    """A .npy file with exactly this header text (padded like numpy pads it)."""
    text = header.encode("utf-8") if isinstance(header, str) else header
    prefix = 10 if major == 1 else 12
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    size = len(text).to_bytes(2 if major == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([major, 0]) + size + text + data


def npy_header(descr: str, shape: str, fortran: str = "False") -> str:
    """The header text numpy writes, with the three values spliced in verbatim."""
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"


def safetensors_raw(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    """A safetensors file with exactly this header (a dict is JSON-encoded)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def safetensors_of(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A well-formed safetensors file from (dtype name, shape, raw bytes) per tensor."""
    header: dict[str, Any] = {}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    return safetensors_raw(header, data)


def v2_json(datatype: Any, shape: Any, data: Any, **params: Any) -> bytes:
    """A V2 request with one JSON input."""
    doc = {"inputs": [{"name": "INPUT", "datatype": datatype, "shape": shape, "data": data}]}
    if params:
        doc["parameters"] = params
    return json.dumps(doc).encode()


def v2_binary(datatype: Any, shape: Any, raw: bytes, **params: Any) -> tuple[bytes, dict[str, str]]:
    """A V2 request with one binary input, and its Inference-Header-Content-Length."""
    spec = {
        "name": "INPUT",
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": len(raw)},
    }
    doc: dict[str, Any] = {"inputs": [spec]}
    if params:
        doc["parameters"] = params
    head = json.dumps(doc).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}
