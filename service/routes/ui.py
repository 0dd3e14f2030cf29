"""The dashboard at ``/ui``: static files shipped in the package (service/ui/), no CDN.

The page reads the public API (sessions, ``/stats``, ``/history``) with the caller's API key;
it has no data route of its own. Every answer carries a Content-Security-Policy that lets the
page reach its own origin only, so a page that tried to load or send anything elsewhere would
be stopped by the browser.
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.errors import ServiceError
from service.settings import Settings
from service.views import json_replay, to_response

router = APIRouter(prefix="/ui", include_in_schema=False)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new release must not mix with old scripts
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class UnknownAsset(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """A file of service/ui/ by name (flat: no path separators) and its media type."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in _TYPES:
        raise UnknownAsset(f"no dashboard file {name!r}")
    path = resources.files("service").joinpath("ui", name)
    if not path.is_file():
        raise UnknownAsset(f"no dashboard file {name!r}")
    return path.read_bytes(), _TYPES[suffix]


def _file(name: str) -> Response:
    data, media = _asset(name)
    return Response(data, 200, headers=_HEADERS, media_type=media)


@router.get("")
def page() -> Response:
    return _file("index.html")


@router.get("/config.json")
def config(request: Request) -> Response:
    """What the page needs before its first API call: whether to ask for a key, how often
    to poll."""
    settings: Settings = request.app.state.settings
    doc = {"auth": bool(settings.key_list()), "poll_ms": settings.ui_poll_ms}
    return to_response(json_replay(doc, headers=_HEADERS))


@router.get("/static/{name}")
def static(name: str) -> Response:
    return _file(name)
