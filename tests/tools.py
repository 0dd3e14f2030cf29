"""External tools the tests drive (redis-server, docker, chromium, java, node): where to find
them, and what happens when one is missing: a skip on a developer's machine, a failure in CI
(``CI`` set), so that a green CI never hides a test that did not run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

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


def kill_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a process the tests started (if it still runs) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 15.0) -> None:
    """SIGTERM a process the tests started, then SIGKILL it if it outlives ``grace_s``."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            kill_process(proc)
