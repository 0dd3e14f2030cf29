"""CI's entry points: the README's test command installs the system packages first, and the
install script costs nothing (no apt call) on a machine that already has them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / ".ci" / "install-system"


def packages() -> list[str]:
    block = re.search(r"packages=\((.*?)\n\)", INSTALL.read_text(), re.S)
    assert block is not None
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_test_command_installs_system_packages_before_the_venv() -> None:
    # What .ci/run executes: the line after the marker and its fence.
    out = subprocess.run(
        ["bash", "-c", "grep -A2 '<!-- test-command' README.md | sed -n '3p'"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(".ci/install-system && python3 -m venv .venv && ")


def test_install_script_lists_what_the_suite_drives() -> None:
    assert {"docker.io", "docker-compose", "debootstrap", "redis-server"} <= set(packages())


def test_install_script_makes_no_apt_call_when_everything_is_installed(tmp_path: Path) -> None:
    for package in packages():
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", package],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if status != "installed":
            pytest.skip(f"{package} is not installed here (CI's install-system installs it)")
    # An apt-get that fails: the script must not reach it.
    fake = tmp_path / "apt-get"
    fake.write_text("#!/bin/sh\necho apt-get was called >&2\nexit 97\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.run([str(INSTALL)], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
