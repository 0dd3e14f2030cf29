"""A session's fit history: newest first, paginated by version (``before``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from service.deps import StoreDep
from service.records import history_json
from service.routes.openapi import PROBLEMS
from service.stores.base import Store
from service.views import json_replay, to_response

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["history"])

MAX_LIMIT = 1000


def history_entries(
    store: Store, session_id: str, limit: int, before: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` entries older than version ``before``, newest first, and the
    ``before`` of the next page (None on the last one). The caller has read the session."""
    items = store.history(session_id, limit + 1, before)
    more = len(items) > limit
    items = items[:limit]
    return [history_json(i) for i in items], (items[-1].version if more else None)


@router.get(
    "/history",
    summary="Fit history: per-fit statistics and drift, newest first",
    description="The newest fits (BNAAS_HISTORY_RECENT) carry per-channel `mean`, `var` "
    "(biased) and `drift`; older ones only their summary (`full: false`), one every "
    "BNAAS_HISTORY_EVERY versions. Page with `before=next_before`.",
    responses=PROBLEMS,
)
def get_history(
    session_id: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="entries per page")] = 50,
    before: Annotated[
        int | None, Query(ge=1, description="only fits that produced a version below this")
    ] = None,
) -> Response:
    store.read(session_id)  # the owner is checked first: another's session is a 404
    fits, next_before = history_entries(store, session_id, limit, before)
    doc = {
        "session_id": session_id,
        "order": "newest-first",
        "fits": fits,
        "next_before": next_before,
    }
    return to_response(json_replay(doc))
