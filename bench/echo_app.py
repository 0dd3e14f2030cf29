"""The service app plus bare echo routes, for bench/http.py's reference measurements.

Same factory, middleware, dependencies and uvicorn setup as the real routes; the echo routes
do the least a route can: return the body (binary reference), or orjson-parse and
re-serialize it (JSON reference).
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from starlette.responses import Response

from service.app import create_app
from service.deps import BodyDep
from service.settings import Settings


def app() -> FastAPI:
    application = create_app(Settings())

    @application.post("/bench/echo")
    def echo(body: BodyDep) -> Response:
        return Response(body.data, media_type="application/octet-stream")

    @application.post("/bench/echo-json")
    def echo_json(body: BodyDep) -> Response:
        return Response(orjson.dumps(orjson.loads(body.data)), media_type="application/json")

    return application
