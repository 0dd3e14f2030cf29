"""Session lifecycle: create, list, read, delete, reset."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response

import bncore
from service.deps import (
    BackendDep,
    CommitsDep,
    IdempotencyDep,
    IfMatchDep,
    StoreDep,
    owner_of,
)
from service.routes.openapi import PROBLEMS, headers
from service.stores.base import Replay, Session
from service.views import etag, json_replay, session_view, to_response

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class CreateSession(BaseModel):
    """A new BatchNorm layer. ``convention`` (default torch) fixes the meaning of ``momentum``
    (torch: the weight of the new batch; keras/onnx: the weight of the old value; null is the
    cumulative average), the running-variance update (torch unbiased; keras/onnx biased) and
    the defaults of eps and momentum where not given (torch 1e-5 and 0.1, keras 1e-3 and
    0.99, onnx 1e-5 and 0.9). The momentum is kept exactly as given."""

    model_config = ConfigDict(extra="forbid")

    num_features: StrictInt = Field(ge=1, le=1 << 20, description="C, the channel count")
    eps: float = Field(1e-5, gt=0, allow_inf_nan=False, description="default per convention")
    momentum: float | None = Field(
        0.1, ge=0, le=1, allow_inf_nan=False, description="as given, in `convention`'s meaning"
    )
    convention: Literal["torch", "keras", "onnx"] = "torch"
    affine: bool = True
    track_running_stats: bool = True
    channel_axis: Literal[1, -1] = Field(1, description="1: (N, C, ...); -1: channels-last")
    dtype: Literal["float32", "float64"] = "float32"
    nan_policy: Literal["reject", "propagate", "omit"] = "reject"
    weight: list[float] | None = Field(None, description="initial weight (gamma), C values")
    bias: list[float] | None = Field(None, description="initial bias (beta), C values")
    name: str | None = Field(None, max_length=200)
    drift_max_kl: float | None = Field(None, ge=0, allow_inf_nan=False)
    drift_max_mean_shift: float | None = Field(None, ge=0, allow_inf_nan=False)
    drift_metrics: bool = False


def _view_replay(session: Session, code: int = 200) -> Replay:
    headers = {"ETag": etag(session.version)}
    if code == status.HTTP_201_CREATED:
        headers["Location"] = f"/v1/sessions/{session.id}"
    return json_replay(session_view(session), code, headers)


@router.post(
    "",
    status_code=201,
    summary="Create a session",
    responses=PROBLEMS,
    openapi_extra=headers("Idempotency-Key"),
)
def create_session(
    spec: CreateSession,
    request: Request,
    store: StoreDep,
    commits: CommitsDep,
    backend: BackendDep,
    idem: IdempotencyDep,
) -> Response:
    # only what the client gave: eps and momentum default per convention
    config = bncore.BNConfig.for_convention(
        **spec.model_dump(exclude={"weight", "bias", "name"}, include=spec.model_fields_set),
    )
    state = bncore.initial_state(config, weight=spec.weight, bias=spec.bias, xp=backend.xp)
    now = time.time()
    sid = secrets.token_urlsafe(16)
    session = Session(sid, state, 1, now, now, spec.name, owner_of(request))
    created, replayed = commits.create(store, session, idem)
    return to_response(_view_replay(created, 201), replayed=replayed)


@router.get("", summary="List sessions, ordered by id")
def list_sessions(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(description="the last id of the previous page")] = None,
) -> Response:
    sessions = store.list(limit, after)
    doc: dict[str, Any] = {"sessions": [session_view(s) for s in sessions]}
    if len(sessions) == limit:
        doc["next_after"] = sessions[-1].id
    return to_response(json_replay(doc))


@router.get("/{session_id}", summary="Read a session", responses=PROBLEMS)
def get_session(session_id: str, store: StoreDep) -> Response:
    return to_response(_view_replay(store.read(session_id)))


@router.delete(
    "/{session_id}",
    status_code=204,
    summary="Delete a session",
    responses=PROBLEMS,
    openapi_extra=headers("If-Match"),
)
def delete_session(session_id: str, store: StoreDep, if_match: IfMatchDep) -> Response:
    store.delete(session_id, if_match=if_match)
    return Response(status_code=204)


@router.post(
    "/{session_id}/reset",
    summary="Reset running statistics and population",
    responses=PROBLEMS,
    openapi_extra=headers("If-Match"),
)
def reset_session(
    session_id: str,
    store: StoreDep,
    commits: CommitsDep,
    if_match: IfMatchDep,
    parameters: Annotated[bool, Query(description="also reset weight to 1 and bias to 0")] = False,
) -> Response:
    def reset(old: bncore.BNState) -> bncore.BNState:
        keep: dict[str, Any] = {} if parameters else {"weight": old.weight, "bias": old.bias}
        xp = bncore.namespace(old.population.mean)
        return bncore.initial_state(old.config, **keep, xp=xp, finite=False)

    out = commits.change(store, store.read(session_id), reset, if_match=if_match)
    return to_response(_view_replay(out.session))
