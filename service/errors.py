"""One table from exception type to HTTP status and problem type, and the handlers that
answer every failure as RFC 9457 problem+json with an ``error`` member (for V2 clients)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

import bncore

log = logging.getLogger("bnaas")

PROBLEM_JSON = "application/problem+json"


class ServiceError(Exception):
    """A failure the service reports as a problem; subclasses set the status and type."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class MalformedBody(ServiceError):
    status, slug, title = 400, "malformed-body", "Malformed request body"


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "API key missing or not valid"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": 'Bearer realm="bnaas"'})


class SessionNotFound(ServiceError):
    status, slug, title = 404, "session-not-found", "Session not found"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found")


class NotAcceptable(ServiceError):
    status, slug, title = 406, "not-acceptable", "No acceptable response format"


class PreconditionFailed(ServiceError):
    status, slug, title = 412, "precondition-failed", "Session version does not match If-Match"


class BodyTooLarge(ServiceError):
    status, slug, title = 413, "body-too-large", "Request body too large"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidBody(ServiceError):
    """Well-formed JSON whose members do not combine (``from_session`` beside moments, ...)."""

    status, slug, title = 422, "invalid-body", "Request body members do not fit together"


class IdempotencyMismatch(ServiceError):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key reused with another body"


class StoreUnavailable(ServiceError):
    status, slug, title = 503, "store-unavailable", "Session store unavailable"

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})


# Domain errors of the engine: (status, problem slug, title).
ENGINE_ERRORS: dict[type[bncore.BNError], tuple[int, str, str]] = {
    bncore.ConfigError: (422, "invalid-config", "Invalid session configuration"),
    bncore.ShapeError: (422, "shape-mismatch", "Tensor shape does not fit the session"),
    bncore.DTypeError: (422, "unsupported-dtype", "Unsupported tensor dtype"),
    bncore.BatchSizeError: (422, "batch-too-small", "Too few values per channel"),
    bncore.NonFiniteError: (422, "non-finite-input", "Input holds NaN or Inf"),
    bncore.StateError: (409, "state-conflict", "Operation conflicts with the session state"),
    bncore.ValueRangeError: (422, "value-out-of-range", "Value out of range"),
}


def problem_body(status: int, slug: str, title: str, detail: str, path: str, **extra: Any) -> bytes:
    """The one error body: RFC 9457 members plus ``error`` (what V2 clients read)."""
    body = {
        "type": f"urn:bnaas:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": path,
        "error": detail,
        **extra,
    }
    return orjson.dumps(body)


def problem(
    request: Request, status: int, slug: str, title: str, detail: str, **extra: Any
) -> Response:
    """A problem+json response; on V2 routes bad input is 400, as that protocol has it."""
    path = request.url.path
    if status == 422 and path.startswith("/v2/"):
        status = 400
    return Response(
        problem_body(status, slug, title, detail, path, **extra), status, media_type=PROBLEM_JSON
    )


def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    resp = problem(request, exc.status, exc.slug, exc.title, exc.detail)
    resp.headers.update(exc.headers)
    return resp


def _engine_error(request: Request, exc: Exception) -> Response:
    for cls in type(exc).__mro__:
        if cls in ENGINE_ERRORS:
            status, slug, title = ENGINE_ERRORS[cls]
            break
    else:
        status, slug, title = 422, "invalid-input", "Invalid input"
    extra: dict[str, Any] = {}
    if isinstance(exc, bncore.NonFiniteError):
        extra["channels"] = exc.channels
    return problem(request, status, slug, title, str(exc), **extra)


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    invalid = [e for e in exc.errors() if e.get("type") == "json_invalid"]
    if invalid:  # bytes that are not JSON are a 400 on every route, as on the tensor routes
        ctx = invalid[0].get("ctx") or {}
        detail = f"invalid JSON: {ctx.get('error', invalid[0].get('msg'))}"
        return problem(request, 400, MalformedBody.slug, MalformedBody.title, detail)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    detail = "; ".join(parts) or "invalid request"
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
    return problem(
        request, 422, "validation-error", "Request validation failed", detail, errors=errors
    )


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    slug = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}.get(
        exc.status_code, "http-error"
    )
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
    resp = problem(request, exc.status_code, slug, detail, detail)
    if exc.headers:
        resp.headers.update(exc.headers)
    return resp


def _client_gone(request: Request, exc: Exception) -> Response:
    # Not a server error: the client left while its body was read. The server's edge logs
    # the disconnect (service/server.py); this answer reaches no one. 499 as nginx counts it.
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(request, 500, "internal", "Internal server error", "internal server error")


def install(app: FastAPI) -> None:
    """Register every handler in one place."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(bncore.BNError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
