"""The external reference for bench/http.py: the least a FastAPI app can do per request.

    python -m uvicorn bench.bare_echo:app --host 127.0.0.1 --port P --no-access-log

One async route per wire format, no middleware, no dependencies, no store: the npy echo parses
the header, views the data and answers the same array as npy; the JSON echo is orjson in and
out; the V2 echo parses the JSON header, views the binary tensor and answers it as a V2 binary
output. bnaas's routes do this plus their real work, so their ratio to this app is the share of
the HTTP stack's ceiling that bnaas reaches. Knows nothing of bnaas (imports no service code).
"""

from __future__ import annotations

import io
import math

import numpy as np
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

_V2_TYPES = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


@app.get("/readyz")
async def readyz() -> Response:
    return Response(status_code=200)


def _npy(a: np.ndarray) -> bytes:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
    return head.getvalue() + a.data  # bytes + buffer: the tensor bytes copied once


@app.post("/echo/npy")
async def echo_npy(request: Request) -> Response:
    body = await request.body()
    f = io.BytesIO(body)
    np.lib.format.read_magic(f)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    x = np.frombuffer(body, dtype, math.prod(shape), f.tell()).reshape(
        shape, order="F" if fortran else "C"
    )
    return Response(_npy(x), media_type="application/x-npy")


@app.post("/echo/json")
async def echo_json(request: Request) -> Response:
    return Response(orjson.dumps(orjson.loads(await request.body())), media_type="application/json")


@app.post("/v2/models/{model}/infer")
async def echo_v2(model: str, request: Request) -> Response:
    body = await request.body()
    json_end = int(request.headers["inference-header-content-length"])
    spec = orjson.loads(body[:json_end])["inputs"][0]
    dtype = np.dtype(_V2_TYPES[spec["datatype"]])
    x = np.frombuffer(body, dtype, math.prod(spec["shape"]), json_end).reshape(spec["shape"])
    out = {
        "name": "OUTPUT",
        "datatype": spec["datatype"],
        "shape": list(x.shape),
        "parameters": {"binary_data_size": x.nbytes},
    }
    head = orjson.dumps({"model_name": model, "model_version": "1", "outputs": [out]})
    return Response(
        head + x.data,
        headers={"Inference-Header-Content-Length": str(len(head))},
        media_type="application/octet-stream",
    )
