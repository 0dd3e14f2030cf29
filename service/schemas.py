"""The JSON documents on the wire, as pydantic models: for OpenAPI only.

Routes render their answers with orjson straight from arrays (the hot path never builds
models); these classes describe the same bytes so that ``/openapi.json`` has a real schema for
every body, and generated clients get real types. ``tests/e2e/test_schemathesis.py`` checks
live answers against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, WithJsonSchema
from pydantic.json_schema import models_json_schema

import bncore

# pydantic cannot point at a schema it did not make: a placeholder, swapped by ``defs()``.
Nested = Annotated[list[Any], WithJsonSchema({"x-bnaas-ref": "Nested"})]
Values = Annotated[
    list[float | None], Field(description="one value per channel (C,); null stands for NaN")
]
DType = Literal["float16", "float32", "float64"]


def _absent(schema: dict[str, Any]) -> None:
    """An optional member that may be left out but not sent as null (the server reads null
    as a wrong value, not as absence): no ``default: null``, no null alternative."""
    schema.pop("default", None)
    kept = [s for s in schema.pop("anyOf", ()) if s != {"type": "null"}]
    if len(kept) == 1:
        schema.update(kept[0])


class Problem(BaseModel):
    """RFC 9457 problem details; ``error`` repeats ``detail`` for V2 clients. Some problems
    add members (``errors`` for validation, ``channels`` for non-finite input)."""

    type: str = Field(description="urn:bnaas:problem:<slug>", examples=["urn:bnaas:problem:x"])
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request path")
    error: str


# --- requests -------------------------------------------------------------------------------


class TensorIn(BaseModel):
    """One tensor: nested lists, or a flat list with ``shape``. ``dtype`` defaults to the
    session's."""

    data: Nested
    shape: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="the shape of a flat `data` list"
    )
    dtype: DType | None = Field(None, json_schema_extra=_absent)


class BackwardIn(BaseModel):
    """The forward input and dL/dy of the same shape (``shape`` applies to both)."""

    data: Nested
    grad_output: Nested
    shape: list[Annotated[int, Field(ge=0)]] | None = None
    dtype: DType | None = Field(None, json_schema_extra=_absent)


class FoldIn(BaseModel):
    """The preceding layer: ``weight`` with output channels first, optional ``bias`` (C,)."""

    weight: Nested
    bias: Values | None = Field(None, json_schema_extra=_absent)
    dtype: DType | None = Field(None, json_schema_extra=_absent)


# --- sessions -------------------------------------------------------------------------------


class SessionView(BaseModel):
    """A session: configuration, progress and version (its buffers are in ``/stats``)."""

    id: str
    name: str | None
    config: Annotated[dict[str, Any], WithJsonSchema({"x-bnaas-ref": "Config"})]
    num_batches_tracked: int
    population_count: int
    version: int = Field(description="the session's ETag, increased by every change")
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    updated_at: str = Field(json_schema_extra={"format": "date-time"})


class SessionList(BaseModel):
    """One page of sessions ordered by id; ``next_after`` is present when more may follow."""

    sessions: list[SessionView]
    next_after: str | None = None


# --- compute --------------------------------------------------------------------------------


class Tensor(BaseModel):
    """One tensor as nested lists, with its shape and dtype."""

    data: Nested
    shape: list[int]
    dtype: str


class BatchStats(BaseModel):
    """The batch's per-channel mean and biased variance, and values per channel."""

    mean: Values
    var: Values
    count: int


class DriftSummary(BaseModel):
    max_kl: float | None = None
    mean_kl: float | None = None
    max_abs_mean_shift: float | None = None
    max_abs_log_var_ratio: float | None = None
    top_kl_channels: list[int] = []


class Drift(BaseModel):
    """The batch against the running statistics before the update, per channel."""

    mean_shift: Values
    log_var_ratio: Values
    kl: Values
    summary: DriftSummary | None = None
    flags: list[str] = []


class FitStats(BaseModel):
    """What every fit answers (alone with ``?output=false``)."""

    batch: BatchStats
    num_batches_tracked: int
    version: int
    drift: Drift | None = Field(None, description="null when the session tracks no running stats")


class FitAnswer(FitStats):
    """The normalized batch with the fit's statistics (without it for ``?output=false``)."""

    data: Nested = Field(default_factory=list, description="absent with ?output=false")
    shape: list[int] = Field(default_factory=list, description="absent with ?output=false")
    dtype: str = Field("", description="absent with ?output=false")


class BackwardAnswer(BaseModel):
    grad_input: Tensor
    grad_weight: Values | None = Field(None, description="absent without affine")
    grad_bias: Values | None = Field(None, description="absent without affine")
    version: int


class FoldAnswer(BaseModel):
    """The folded layer: W' = W·scale, b' = (b − running_mean)·scale + bias."""

    weight: Tensor
    bias: Values


# --- stats ----------------------------------------------------------------------------------


class PopulationMoments(BaseModel):
    """Exact population moments over every fitted sample (float64, Chan's merge)."""

    count: Values
    mean: Values
    var: Values = Field(description="biased (M2 / count)")
    m2: Values | None = Field(None, description="M2: what an import restores exactly")


class Restore(BaseModel):
    """What no framework's format says: enough to restore the session exactly."""

    convention: str
    momentum: float | None
    eps: float
    channel_axis: int
    num_batches_tracked: int
    population: PopulationMoments


class MergeAnswer(BaseModel):
    """The population moments after the merge (the running statistics are untouched)."""

    population: PopulationMoments
    version: int


class HistoryEntry(BaseModel):
    """One fit: summary always; the batch statistics and drift while it is recent (``full``)."""

    version: int = Field(description="the version this fit produced")
    num_batches_tracked: int
    time: str = Field(json_schema_extra={"format": "date-time"})
    count: int
    summary: DriftSummary | None = None
    flags: list[str] = []
    full: bool
    mean: Values | None = None
    var: Values | None = None
    drift: Drift | None = None


class History(BaseModel):
    session_id: str
    order: Literal["newest-first"]
    fits: list[HistoryEntry]
    next_before: int | None = Field(description="pass as ?before= for the next page")


class StatsExport(BaseModel):
    """PyTorch state_dict names plus eps, momentum and the population moments."""

    weight: Values | None = Field(None, description="absent without affine")
    bias: Values | None = Field(None, description="absent without affine")
    running_mean: Values | None = Field(None, description="absent without running stats")
    running_var: Values | None = Field(None, description="absent without running stats")
    num_batches_tracked: int
    eps: float
    momentum: float | None
    convention: str | None = None
    channel_axis: int | None = None
    population: PopulationMoments
    history: list[HistoryEntry] | None = Field(None, description="with ?history=N")


class KerasStats(BaseModel):
    """Keras BatchNormalization names (momentum: the old value's weight)."""

    gamma: Values | None = None
    beta: Values | None = None
    moving_mean: Values | None = None
    moving_variance: Values | None = None
    momentum: float | None
    epsilon: float
    axis: int | None = None
    center: bool | None = None
    scale: bool | None = None
    bnaas: Restore | None = None


class OnnxStats(BaseModel):
    """ONNX BatchNormalization input names (momentum: the old value's weight)."""

    scale: Values | None = None
    B: Values | None = None
    input_mean: Values | None = None
    input_var: Values | None = None
    momentum: float | None
    epsilon: float
    bnaas: Restore | None = None


class SklearnStats(BaseModel):
    """scikit-learn StandardScaler attributes of the population moments."""

    mean_: Values
    var_: Values
    scale_: Values
    n_samples_seen_: int | list[int] = Field(description="one count, or one per feature")
    n_features_in_: int | None = None
    with_mean: bool | None = None
    with_std: bool | None = None


# --- probes and V2 --------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    backend: str
    backend_reason: str
    cpu_kernels: bool


class NotReady(BaseModel):
    status: Literal["unavailable"]
    detail: str
    error: str


class V2Error(BaseModel):
    """The Open Inference Protocol's error body."""

    error: str


class V2Server(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2Model(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMeta]
    outputs: list[V2TensorMeta]


class V2Parameters(BaseModel):
    binary_data_size: int | None = None
    binary_data: bool | None = None
    binary_data_output: bool | None = None
    mode: Literal["transform", "fit"] | None = None


class V2InputTensor(BaseModel):
    name: Literal["INPUT"]
    datatype: Literal["FP16", "FP32", "FP64"]
    shape: list[Annotated[int, Field(ge=0)]]
    data: list[float | None] | None = Field(
        None,
        description="flat, row-major; absent when parameters.binary_data_size is given",
        json_schema_extra=_absent,
    )
    parameters: V2Parameters | None = None


class V2OutputRequest(BaseModel):
    name: Literal["OUTPUT"]
    parameters: V2Parameters | None = None


class V2InferRequest(BaseModel):
    """parameters.mode: ``transform`` (default) or ``fit``; binary_data_output for raw bytes."""

    id: str | None = None
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=1)
    outputs: list[V2OutputRequest] | None = None
    parameters: V2Parameters | None = None


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | None] | None = Field(None, description="absent in binary answers")
    parameters: V2Parameters | None = None


class V2AnswerParameters(BaseModel):
    mode: Literal["transform", "fit"]
    num_batches_tracked: int | None = Field(None, description="after a fit")


class V2InferAnswer(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]
    parameters: V2AnswerParameters


_REQUESTS: tuple[type[BaseModel], ...] = (
    Problem,
    TensorIn,
    BackwardIn,
    FoldIn,
    V2InferRequest,
)
_ANSWERS: tuple[type[BaseModel], ...] = (
    SessionView,
    SessionList,
    Tensor,
    FitStats,
    FitAnswer,
    BackwardAnswer,
    FoldAnswer,
    History,
    MergeAnswer,
    StatsExport,
    KerasStats,
    OnnxStats,
    SklearnStats,
    Health,
    Ready,
    NotReady,
    V2Error,
    V2Server,
    V2Model,
    V2InferAnswer,
)


def defs(ref_template: str) -> dict[str, Any]:
    """Every body schema by name, referring to each other with ``ref_template``."""
    inputs = [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _ANSWERS]
    _, top = models_json_schema(inputs, ref_template=ref_template)  # type: ignore[arg-type]
    found: dict[str, Any] = top["$defs"]
    config = TypeAdapter(bncore.BNConfig).json_schema(ref_template=ref_template)
    config["required"] = list(config["properties"])  # to_dict writes every field
    config["title"] = "Config"
    found["Config"] = config
    # Tensors of any rank as nested JSON arrays; the server writes NaN and Inf as null.
    found["Nested"] = {
        "type": "array",
        "description": "nested lists of numbers (rank >= 1); null stands for NaN",
        "items": {"anyOf": [{"type": "number"}, {"type": "null"}, {"x-bnaas-ref": "Nested"}]},
    }
    for model in _ANSWERS:
        # A default means nothing in an answer, and generators read one as "always present".
        for prop in found[model.__name__].get("properties", {}).values():
            prop.pop("default", None)
    _swap(found, ref_template)
    return found


def _swap(node: Any, ref_template: str) -> None:
    """Placeholders -> ``$ref``."""
    if isinstance(node, list):
        for item in node:
            _swap(item, ref_template)
    elif isinstance(node, dict):
        name = node.pop("x-bnaas-ref", None)
        if name is not None:
            node["$ref"] = ref_template.format(model=name)
        for value in node.values():
            _swap(value, ref_template)
