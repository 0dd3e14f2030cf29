"""The README walk-through with the JDK's stock ``java.net.http.HttpClient`` (default settings,
so it offers an h2c upgrade on every request) against a live server, API key included."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import API_KEY
from tests.e2e.conftest import Server
from tests.tools import require

pytestmark = [pytest.mark.slow, pytest.mark.clients]

SOURCE = Path(__file__).with_name("java") / "Walkthrough.java"


def test_stock_java_http_client_walks_through(keyed_server: Server) -> None:
    java = require("java")
    # Source-file mode (Java 11+): compiled in memory, no build tool.
    done = subprocess.run(
        [java, str(SOURCE), keyed_server.url, API_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"ok": true' in done.stdout
