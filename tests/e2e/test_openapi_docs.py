"""/docs and /redoc work offline: their pages load only same-origin assets, which answer."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

# Every URL an HTML page makes the browser load: src/href attributes and SwaggerUIBundle's url.
_URLS = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_same_origin_assets(server: Server, page: str) -> None:
    r = httpx.get(f"{server.url}{page}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    urls = [a or b for a, b in _URLS.findall(r.text)]
    assert "/openapi.json" in urls
    assert len(urls) >= 3, urls  # the page, its script, the spec (and styles, icon)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url}"
        asset = httpx.get(f"{server.url}{url}")
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url


def test_unknown_docs_asset_is_a_problem_404(server: Server) -> None:
    r = httpx.get(f"{server.url}/docs/assets/..%2Fcore.py")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_docs_and_spec_need_no_key_when_keys_are_configured(tmp_path: Path) -> None:
    server = Server(f"sqlite:///{tmp_path / 'k.db'}", env={"BNAAS_API_KEYS": "k1"}).start()
    try:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert httpx.get(f"{server.url}{path}").status_code == 200, path
        spec = httpx.get(f"{server.url}/openapi.json").json()
        fit = spec["paths"]["/v1/sessions/{session_id}/fit"]["post"]
        assert fit["security"] == [{"bearer": []}, {"apiKey": []}]
        assert httpx.post(f"{server.url}/v1/sessions", json={"num_features": 2}).status_code == 401
    finally:
        server.stop()
