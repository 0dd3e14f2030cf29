"""The dashboard's files: served from the package, same-origin only, nothing else reachable."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


@pytest.fixture
def ui() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store="memory://", device="cpu"))) as c:
        yield c


def test_the_page_is_html_with_a_policy_that_allows_its_own_origin_only(ui: TestClient) -> None:
    r = ui.get("/ui")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert "unsafe" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert 'id="bn-plot-data"' in r.text


def test_every_file_the_page_names_is_served_with_its_type(ui: TestClient) -> None:
    page = ui.get("/ui").text
    names = re.findall(r'(?:src|href)="/ui/static/([^"]+)"', page)
    names += re.findall(r'from "\./([^"]+)"', ui.get("/ui/static/app.js").text)
    assert {"app.js", "app.css", "bn.js", "plot.js", "favicon.svg"} <= set(names)
    for name in names:
        r = ui.get(f"/ui/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-security-policy"]
    assert ui.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")


def test_no_file_names_another_origin(ui: TestClient) -> None:
    for name in ("index.html", "app.js", "bn.js", "plot.js", "app.css"):
        text = resources.files("service").joinpath("ui", name).read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert urls in ([], ["http://www.w3.org/2000/svg"]), (name, urls)


@pytest.mark.parametrize(
    "name", ["missing.js", "..%2Fapp.py", ".hidden.js", "app.py", "..%2F..%2Fsettings.py"]
)
def test_unknown_or_outside_files_are_not_found(ui: TestClient, name: str) -> None:
    r = ui.get(f"/ui/static/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_the_config_says_whether_a_key_is_needed() -> None:
    settings = Settings(store="memory://", device="cpu", api_keys="k1", ui_poll_ms=700)
    with TestClient(create_app(settings)) as c:
        assert c.get("/ui/config.json").json() == {"auth": True, "poll_ms": 700}


def test_the_dashboard_can_be_switched_off() -> None:
    with TestClient(create_app(Settings(store="memory://", device="cpu", ui_enabled=False))) as c:
        assert c.get("/ui").status_code == 404


def test_the_dashboard_is_not_part_of_the_api_schema(ui: TestClient) -> None:
    assert not [p for p in ui.get("/openapi.json").json()["paths"] if p.startswith("/ui")]
