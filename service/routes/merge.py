"""Merge partial population moments into a session (an offline job's, or another session's).

The running statistics are untouched: only the exact population moments change (Chan's
formula). Idempotent with ``Idempotency-Key``: a retry is answered from the state the first
request was applied to (for ``from_session``, with that session's population as it is now).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

import bncore
from service.codecs import parse_json
from service.deps import BodyDep, CommitsDep, IdempotencyDep, IfMatchDep, MetricsDep, StoreDep
from service.errors import InvalidBody, MalformedBody
from service.routes.openapi import PROBLEMS, headers
from service.routes.stats import export_json, inline_schema
from service.views import etag, json_replay, to_response

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["stats"])


class MergeBody(BaseModel):
    """Partial moments per channel (Spark's Summarizer, Beam, Dask, a StandardScaler's
    ``n_samples_seen_``/``mean_``/``var_``), or another session's population."""

    model_config = ConfigDict(extra="forbid")
    count: int | list[int] | None = Field(None, description="one count, or one per channel")
    mean: list[float] | None = None
    m2: list[float] | None = Field(None, description="sum of squared deviations per channel")
    var: list[float] | None = Field(None, description="biased variance (m2 / count)")
    from_session: str | None = Field(None, description="merge this session's population")


def _moments(doc: Any, num_features: int) -> bncore.Moments:
    if not isinstance(doc, dict):
        raise MalformedBody("merge body must be a JSON object")
    unknown = sorted(set(doc) - {"count", "mean", "m2", "var"})
    if unknown:
        raise MalformedBody(f"unknown merge member(s): {', '.join(unknown)}")
    return bncore.partial_moments(
        doc.get("count"),
        doc.get("mean"),
        m2=doc.get("m2"),
        var=doc.get("var"),
        num_features=num_features,
    )


@router.post(
    "/merge",
    summary="Merge partial population moments (count, mean, m2 or var) or another session's",
    openapi_extra={
        **headers("If-Match", "Idempotency-Key"),
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(MergeBody)}},
        },
    },
    responses=PROBLEMS,
)
def merge(
    session_id: str,
    body: BodyDep,
    store: StoreDep,
    commits: CommitsDep,
    if_match: IfMatchDep,
    idem: IdempotencyDep,
    metrics: MetricsDep,
) -> Any:
    doc = parse_json(body.data)
    if isinstance(doc, dict):  # a null member is an absent one, as the schema has it
        doc = {k: v for k, v in doc.items() if v is not None}
    source = doc.get("from_session") if isinstance(doc, dict) else None
    if source is not None:
        if not isinstance(source, str) or set(doc) != {"from_session"}:
            raise InvalidBody("from_session must be a session id, alone in the body")
        other = store.read(source).state  # outside the commit: another session's snapshot

    def change(state: bncore.BNState) -> bncore.BNState:
        c = state.config.num_features
        if source is not None:
            if other.config.num_features != c:
                raise bncore.ShapeError(
                    f"session {source!r} has {other.config.num_features} features, not {c}"
                )
            moments = other.to_host().population
        else:
            moments = _moments(doc, c)
        return bncore.merge_population(state, moments)

    out = commits.change(store, store.read(session_id), change, if_match=if_match, idem=idem)
    merged = change(out.before) if out.replayed else out.session.state
    if not out.replayed:
        metrics.observe_op("merge", merged.config.num_features)
    answer = {"population": export_json(merged)["population"], "version": out.version}
    return to_response(
        json_replay(answer, headers={"ETag": etag(out.version)}), replayed=out.replayed
    )
