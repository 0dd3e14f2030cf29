"""External tools the tests drive (redis-server, docker, chromium, java, node): where to find
them, and what happens when one is missing: a skip on a developer's machine, a failure in CI
(``CI`` set), so that a green CI never hides a test that did not run."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """True under ``.ci/run`` (CI=true), where every tool must be installed."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing(reason: str) -> None:
    """Skip the test (developer machine) or fail it (CI) because a tool is not available."""
    if in_ci():
        pytest.fail(f"{reason} (CI installs it: see .ci/install-system)")
    pytest.skip(reason)


def require(command: str) -> str:
    """The path of ``command`` on PATH; skip or fail (see ``missing``) when it is absent."""
    path = shutil.which(command)
    if path is None:
        missing(f"{command} is not installed")
        raise AssertionError("unreachable")  # missing() raises
    return path
