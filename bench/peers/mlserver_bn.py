"""bench/peers.py's MLServer peer: the same BatchNorm as a custom ``MLModel``.

Runs in its own virtual environment (mlserver==1.7.1, see mlserver-requirements.txt) under
``mlserver start DIR``; bench/peers.py writes DIR's settings.json and one model-settings.json per
model (implementation ``mlserver_bn.BatchNorm``, the model's name keys the parameters file).
Written the way MLServer's custom-runtime docs show: ``NumpyCodec`` in and out.
"""

from __future__ import annotations

from bn_params import load_all
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class BatchNorm(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        self.affine = load_all()[self.name]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        y = self.affine(NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name="OUTPUT", payload=y)],
        )
