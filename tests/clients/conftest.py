"""A live ``bnaas serve`` with an API key for the client examples (Node, Java)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server

API_KEY = "client-example-key"


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[Server]:
    server = Server(
        f"sqlite:///{tmp_path / 'clients.db'}",
        log=tmp_path / "server.log",
        env={"BNAAS_API_KEYS": API_KEY},
    ).start()
    yield server
    server.stop()
