"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a real ``bnaas serve``: the curves it draws are the session's own statistics."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Server
from tests.tools import missing

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# No download, no phoning home: the browser may only talk to the server under test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
C = 24
FITS = 12


def _batches() -> list[np.ndarray[Any, Any]]:
    """Batches whose features drift apart at different speeds (every 5th one fast)."""
    rng = np.random.default_rng(7)
    base, scale = rng.normal(0, 2, C), rng.uniform(0.5, 2, C)
    speed = np.where(np.arange(C) % 5 == 2, 0.4, 0.02)
    return [rng.normal(base + k * speed, scale, size=(16, C)) for k in range(FITS + 1)]


def _running_means(batches: list[np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
    """PyTorch's running mean after 0, 1, ... fits (momentum 0.1), in float64."""
    out = [np.zeros(C)]
    for x in batches:
        out.append(0.9 * out[-1] + 0.1 * x.mean(axis=0))
    return out


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} is not installed (Debian package chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("the playwright Python package is not installed (extra: dev)")
    return CHROMIUM


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[Server]:
    s = Server(
        f"sqlite:///{tmp_path / 'bn.db'}",
        log=tmp_path / "server.log",
        env={"BNAAS_UI_POLL_MS": "300"},
    ).start()
    yield s
    s.stop()


def _pdf(x: float, mean: float, variance: float) -> float:
    return math.exp(-((x - mean) ** 2) / (2 * variance)) / math.sqrt(2 * math.pi * variance)


def _check_curve(curve: dict[str, Any], mean: float, var: float, eps: float) -> None:
    assert curve["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
    assert curve["var"] == pytest.approx(var, rel=1e-12, abs=1e-12)
    assert curve["eps"] == eps
    assert len(curve["points"]) > 100
    for x, y in curve["points"]:
        assert y == pytest.approx(_pdf(x, mean, var + eps), rel=1e-9, abs=1e-300)


def test_dashboard_draws_the_statistics_of_the_picked_session(
    chromium: str, ui_server: Server, tmp_path: Path
) -> None:
    with httpx.Client(base_url=ui_server.url, timeout=10) as api:
        _check_dashboard(api, chromium, ui_server, tmp_path)


def _check_dashboard(api: httpx.Client, chromium: str, ui_server: Server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    sid = api.post("/v1/sessions", json={"num_features": C, "name": "drifting"}).json()["id"]
    api.post("/v1/sessions", json={"num_features": 3, "name": "idle"})
    batches = _batches()
    for x in batches[:FITS]:
        r = api.post(f"/v1/sessions/{sid}/fit?output=false", json={"data": x.tolist()})
        assert r.status_code == 200, r.text

    console: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{ui_server.url}/ui")
            page.click(f'button[data-session-id="{sid}"]')
            page.wait_for_selector(f'body[data-rendered-version="{FITS + 1}"]')
            shown = json.loads(page.locator("#bn-plot-data").text_content() or "{}")

            stats = api.get(f"/v1/sessions/{sid}/stats").json()
            fits = api.get(f"/v1/sessions/{sid}/history", params={"limit": 50}).json()["fits"]
            newest = fits[0]
            assert newest["full"] and newest["version"] == FITS + 1

            # The feature shown first is the one that drifted most in the last fit.
            f = shown["feature"]
            assert f == newest["summary"]["top_kl_channels"][0]
            assert [t["feature"] for t in shown["top_kl"][:5]] == newest["summary"][
                "top_kl_channels"
            ]
            curves = {c["name"]: c for c in shown["curves"]}
            assert set(curves) == {"running", "batch", "population"}
            eps = stats["eps"]
            _check_curve(curves["running"], stats["running_mean"][f], stats["running_var"][f], eps)
            _check_curve(curves["batch"], newest["mean"][f], newest["var"][f], eps)
            assert curves["batch"]["version"] == newest["version"]
            pop = stats["population"]
            _check_curve(curves["population"], pop["mean"][f], pop["var"][f], eps)

            # What the SVG draws is what the data says.
            path = page.locator('#density path[data-series="running"]')
            assert float(path.get_attribute("data-mean") or "nan") == curves["running"]["mean"]
            assert int(path.get_attribute("data-points") or 0) == len(curves["running"]["points"])
            assert page.locator("#density path[data-series]").count() == 3

            # Trajectories: batch means from the history, running means reconstructed from
            # each fit's drift, ending at /stats; checked against PyTorch's update done here.
            traj = shown["trajectories"]
            full = sorted((e for e in fits if e["full"]), key=lambda e: e["version"])
            assert traj["batch_mean"] == [[e["num_batches_tracked"], e["mean"][f]] for e in full]
            expected = _running_means(batches[:FITS])
            assert [n for n, _ in traj["running_mean"]] == list(range(FITS + 1))
            for n, value in traj["running_mean"]:
                assert value == pytest.approx(expected[n][f], rel=1e-5, abs=1e-5)
            assert traj["running_mean"][-1] == [FITS, stats["running_mean"][f]]

            # The feature picker: type an index.
            other = (f + 1) % C
            page.fill("#feature-input", str(other))
            page.press("#feature-input", "Enter")
            page.wait_for_selector(f'body[data-rendered-feature="{other}"]')
            shown = json.loads(page.locator("#bn-plot-data").text_content() or "{}")
            running = next(c for c in shown["curves"] if c["name"] == "running")
            _check_curve(running, stats["running_mean"][other], stats["running_var"][other], eps)

            # Live: a new fit shows up without a reload.
            x = batches[FITS]
            assert api.post(f"/v1/sessions/{sid}/fit", json={"data": x.tolist()}).status_code == 200
            page.wait_for_selector(f'body[data-rendered-version="{FITS + 2}"]', timeout=15_000)
            shown = json.loads(page.locator("#bn-plot-data").text_content() or "{}")
            batch = next(c for c in shown["curves"] if c["name"] == "batch")
            assert batch["version"] == FITS + 2
            assert batch["mean"] == pytest.approx(float(x[:, other].mean()), rel=1e-6)

            # The CI artifact: under BNAAS_TEST_ARTIFACTS when CI sets it, else the tmp dir.
            shot = Path(os.environ.get("BNAAS_TEST_ARTIFACTS") or tmp_path) / "bnaas-ui.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")  # the path, for the CI log (pytest -rP)
        finally:
            browser.close()

    assert [m for m in console if m.startswith(("error", "pageerror"))] == []
    origin = urlsplit(ui_server.url)
    assert requests
    for url in requests:
        u = urlsplit(url)
        assert (u.scheme, u.hostname, u.port) == ("http", "127.0.0.1", origin.port), url


def test_with_keys_the_dashboard_asks_for_one_and_sends_it(chromium: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    key = "dashboard-test-key"
    server = Server(
        f"sqlite:///{tmp_path / 'bn.db'}",
        log=tmp_path / "server.log",
        env={"BNAAS_API_KEYS": key, "BNAAS_UI_POLL_MS": "300"},
    ).start()
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as api:
            sid = api.post("/v1/sessions", json={"num_features": 2, "name": "mine"}).json()["id"]
        console: list[str] = []
        keys_sent: dict[str, str | None] = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.on("request", lambda r: keys_sent.update({r.url: r.headers.get("x-api-key")}))
                page.goto(f"{server.url}/ui")
                page.wait_for_selector("#key-form:not([hidden])")
                assert page.locator(f'button[data-session-id="{sid}"]').count() == 0
                page.fill("#api-key", key)
                page.click("#key-form button[type=submit]")
                page.wait_for_selector(f'button[data-session-id="{sid}"]')
            finally:
                browser.close()
    finally:
        server.stop()
    api_calls = {url: sent for url, sent in keys_sent.items() if "/v1/" in url}
    assert api_calls
    assert set(api_calls.values()) == {key}
    assert [m for m in console if m.startswith(("error", "pageerror"))] == []
