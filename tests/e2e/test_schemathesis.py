"""schemathesis against a live ``bnaas serve``: every documented operation, generated input
(examples, boundary values, random and schema-violating data, stateful sequences through
the spec's links), every check. Any finding fails the test with schemathesis' report."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
KEY = "st-key-1"


@pytest.fixture(params=["open", "keyed"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, list[str]]]:
    keyed = request.param == "keyed"
    env = {"BNAAS_API_KEYS": f"{KEY},st-key-2"} if keyed else {"BNAAS_API_KEYS": ""}
    server = Server(f"sqlite:///{tmp_path / 'st.db'}", log=tmp_path / "server.log", env=env)
    server.start()
    yield server, (["-H", f"Authorization: Bearer {KEY}"] if keyed else [])
    server.stop()


def test_schemathesis_finds_nothing(live: tuple[Server, list[str]], tmp_path: Path) -> None:
    server, auth = live
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st),
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        "20261127",
        "--max-examples",
        "12",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--no-color",
        *auth,
    ]
    # cwd: schemathesis keeps a cache of crashes in ./.schemathesis
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-20000:]
    tested = re.search(r"Tested:\s+(\d+)", report)
    assert tested is not None and int(tested[1]) >= 23, report[-3000:]  # every operation ran
