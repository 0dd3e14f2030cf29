"""A TypeScript client generated from the live /openapi.json (openapi-typescript + openapi-fetch,
versions pinned in ts/package-lock.json) type-checks with ``tsc --strict`` and runs the README
walk-through under Node."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import API_KEY
from tests.e2e.conftest import Server
from tests.tools import require

pytestmark = [pytest.mark.slow, pytest.mark.clients]

SOURCES = Path(__file__).with_name("ts")
FILES = ("package.json", "package-lock.json", "tsconfig.json", "walkthrough.ts")


def run(cmd: list[str], cwd: Path, timeout: float, **env: str) -> str:
    done = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project with its pinned dependencies installed (``npm ci``)."""
    npm = require("npm")
    require("node")
    root = tmp_path_factory.mktemp("ts")
    for name in FILES:
        shutil.copy(SOURCES / name, root / name)
    run([npm, "ci", "--no-audit", "--no-fund"], root, 300)
    return root


def test_generated_client_types_every_json_answer(project: Path, keyed_server: Server) -> None:
    run(["npm", "run", "-s", "generate"], project, 120, BNAAS_URL=keyed_server.url)
    types = (project / "api.d.ts").read_text()
    # openapi-typescript writes `unknown` where the spec has no schema; the only ones allowed
    # are the index signatures it adds to every response's headers.
    unknown = [
        line.strip()
        for line in types.splitlines()
        if "unknown" in line and line.strip() != "[name: string]: unknown;"
    ]
    assert unknown == []
    for path in (
        "/v1/sessions",
        "/v1/sessions/{session_id}/fit",
        "/v1/sessions/{session_id}/stats",
    ):
        assert f'"{path}": {{' in types
    assert re.search(r'"application/json": components\["schemas"\]\["FitAnswer"\]', types)

    run(["npx", "tsc", "-p", ".", "--strict"], project, 300)
    out = run(["node", "dist/walkthrough.js", keyed_server.url, API_KEY], project, 60)
    assert '"ok":true' in out
