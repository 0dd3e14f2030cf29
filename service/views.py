"""How sessions and results look on the wire: JSON views, ETags, saved responses."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

import bncore
from service.codecs import JSON, dumps
from service.records import iso_time
from service.stores.base import Replay, Session


def etag(version: int) -> str:
    """The session version as a strong ETag."""
    return f'"{version}"'


def session_view(s: Session) -> dict[str, Any]:
    """Config, progress and version of a session (no buffers: those are in /stats)."""
    count = bncore.to_host(s.state.population.count)
    return {
        "id": s.id,
        "name": s.name,
        "config": s.state.config.to_dict(),
        "num_batches_tracked": s.state.num_batches_tracked,
        "population_count": int(count.max()) if count.size else 0,
        "version": s.version,
        "created_at": iso_time(s.created_at),
        "updated_at": iso_time(s.updated_at),
    }


def json_replay(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Replay:
    """A JSON answer in the storable form (so an idempotent retry can return it verbatim)."""
    return Replay(status, JSON, dumps(doc), headers or {})


def to_response(replay: Replay, replayed: bool = False) -> Response:
    """The HTTP response of a (possibly saved) answer."""
    headers = dict(replay.headers)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(replay.body, replay.status, headers=headers, media_type=replay.media_type)
