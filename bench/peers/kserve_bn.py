"""bench/peers.py's KServe peer: the same BatchNorm as a custom ``kserve.Model`` (V2 protocol).

    PYTHONPATH=bench/peers BNAAS_PEER_PARAMS=params.json \
        python bench/peers/kserve_bn.py --http_port P --enable_grpc false

Runs in its own virtual environment (kserve==0.21.0, see kserve-requirements.txt), one model
per entry of the parameters file, written the way KServe's custom-model docs show: inputs via
``as_numpy()``, one ``InferOutput`` set from the NumPy result, binary output when asked.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from bn_params import Affine, load_all
from kserve import Model, ModelServer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid


class _BenchConfig(uvicorn.Config):
    """KServe's REST server hard-codes host 0.0.0.0 (a benchmark listens on loopback only) and
    has no flag for uvicorn's access log (off here, as MLServer's is without debug)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        kwargs["access_log"] = False
        super().__init__(*args, **kwargs)


# Looked up at call time by kserve.protocol.rest.server, so patching after the import is enough.
uvicorn.Config = _BenchConfig  # type: ignore[misc]


class BatchNorm(Model):  # type: ignore[misc]
    def __init__(self, name: str, affine: Affine) -> None:
        super().__init__(name)
        self.affine = affine
        self.ready = True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        y = self.affine(payload.inputs[0].as_numpy())
        out = InferOutput(name="OUTPUT", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
        return InferResponse(
            response_id=payload.id or generate_uuid(),  # V2 answers carry an id
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


if __name__ == "__main__":
    ModelServer().start([BatchNorm(name, affine) for name, affine in load_all().items()])
