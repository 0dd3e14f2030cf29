"""A Docker engine for the container tests: the one that answers, or a ``dockerd`` started here.

No registry is reachable from CI, so the base image (``local/debian:bookworm``) is made with
debootstrap from the machine's own Debian mirror, once per engine, and the official images the
compose file names (``redis:7``, ``nginx:1.27``) are stood in for by images built from it
(deploy/standins/). An engine this module started is stopped by its PID at the end of the
session, and the bridge and iptables rules it left behind are removed
(see shared/reference/containers.md: nothing outlives the test run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.tools import missing, require

BASE_IMAGE = "local/debian:bookworm"
REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "deploy" / "standins"
# What the stand-ins are tagged as: the names docker-compose.yml uses.
STANDIN_TAGS = {"redis": "redis:7", "nginx": "nginx:1.27"}
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
ENGINE_START_S = 60.0


@dataclass
class Engine:
    """A Docker engine that answers, and what this session did to it (for the timing report)."""

    docker: str
    started: subprocess.Popen[bytes] | None = None
    forward_policy: str = "ACCEPT"
    log: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    built: set[str] = field(default_factory=set)

    def run(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; on failure the error names the command and its output."""
        return run_command([self.docker, *args], timeout=timeout, check=check)

    def has_image(self, tag: str) -> bool:
        return bool(self.run("images", "-q", tag).stdout.strip())

    def build(self, tag: str, context: Path, *args: str, timeout: float = 900) -> None:
        """Builds ``tag`` once per session (later calls reuse it; the layer cache makes the
        first one cheap on a warm engine)."""
        if tag in self.built:
            return
        t0 = time.monotonic()
        self.run("build", "--network=host", "-t", tag, *args, str(context), timeout=timeout)
        self.timings[f"build {tag}"] = time.monotonic() - t0
        self.built.add(tag)


def run_command(
    cmd: Sequence[str], timeout: float = 600, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cmd`` with ``env`` added to this environment; on failure (``check``) the error carries
    the end of its output."""
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return proc


def _answers(docker: str) -> bool:
    try:
        return run_command([docker, "info"], timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_engine(docker: str, log_dir: Path) -> Engine:
    """The engine that answers ``docker info``, or a ``dockerd`` started in its own session."""
    if _answers(docker):
        return Engine(docker)
    dockerd = require("dockerd")
    policy = _forward_policy()
    log = log_dir / "dockerd.log"
    with open(log, "ab") as out:  # the daemon keeps its own descriptor
        proc = subprocess.Popen(
            [dockerd, "--storage-driver=overlay2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # setsid: a Ctrl-C to pytest does not reach it half-way
        )
    engine = Engine(docker, started=proc, forward_policy=policy, log=log)
    t0 = time.monotonic()
    while time.monotonic() - t0 < ENGINE_START_S:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited {proc.returncode}; see {log}")
        if _answers(docker):
            engine.timings["engine start"] = time.monotonic() - t0
            return engine
        time.sleep(0.5)
    stop_engine(engine)
    raise RuntimeError(f"dockerd did not answer within {ENGINE_START_S} s; see {log}")


def stop_engine(engine: Engine) -> None:
    """Stops the dockerd this module started (by PID) and removes what it leaves behind:
    the docker0 bridge, its iptables chains and the FORWARD policy of DROP."""
    proc = engine.started
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()  # by its PID: dockerd stops its containers and containerd first
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _clean_network(engine.forward_policy)


def _forward_policy() -> str:
    """The FORWARD chain's policy before dockerd sets it to DROP, to restore it afterwards."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return "ACCEPT"
    rules = run_command([iptables, "-S", "FORWARD"], check=False).stdout.split()
    return rules[2] if rules[:2] == ["-P", "FORWARD"] and len(rules) > 2 else "ACCEPT"


def _clean_network(forward_policy: str) -> None:
    ip, iptables = shutil.which("ip"), shutil.which("iptables")
    if ip is not None:
        run_command([ip, "link", "delete", "docker0"], check=False)
    if iptables is None:
        return
    for table, chains in {
        "filter": (
            "DOCKER-USER",
            "DOCKER-ISOLATION-STAGE-1",
            "DOCKER-ISOLATION-STAGE-2",
            "DOCKER",
        ),
        "nat": ("DOCKER",),
    }.items():
        rules = run_command([iptables, "-t", table, "-S"], check=False).stdout.splitlines()
        # Rules that jump to or live in docker's chains go first, then the chains themselves.
        for rule in rules:
            if rule.startswith("-A ") and ("DOCKER" in rule or "docker0" in rule):
                spec = rule[3:].split()
                run_command([iptables, "-t", table, "-D", *spec], check=False)
        for chain in chains:
            run_command([iptables, "-t", table, "-F", chain], check=False)
            run_command([iptables, "-t", table, "-X", chain], check=False)
    run_command([iptables, "-P", "FORWARD", forward_policy], check=False)


def debian_mirror() -> str:
    """The first URI of the machine's apt sources (deb822 or one-line format)."""
    if SOURCES.exists():
        for line in SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            match = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\b", line)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def ensure_base_image(engine: Engine) -> None:
    """``local/debian:bookworm`` (python3, venv, pip, CA certificates), made with debootstrap
    unless the engine already has it. It trusts the host's extra CA certificates so that pip
    works inside ``docker build --network=host``: a base for local builds, never to publish."""
    if engine.has_image(BASE_IMAGE):
        return
    debootstrap = require("debootstrap")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bnaas-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run_command(
            [
                debootstrap,
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
                debian_mirror(),
            ],
            timeout=900,
        )
        cas = sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []
        if cas:
            target = rootfs / "usr/local/share/ca-certificates"
            target.mkdir(parents=True, exist_ok=True)
            for ca in cas:
                shutil.copy(ca, target / ca.name)
            run_command(["chroot", str(rootfs), "update-ca-certificates"])
        # The image starts with the lists debootstrap fetched: drop them, as official images do.
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        try:
            imported = subprocess.run(
                [engine.docker, "import", "-", BASE_IMAGE],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]}")
    engine.timings["base image"] = time.monotonic() - t0


def ensure_standins(engine: Engine) -> None:
    """The official images the compose file names, built from the local base unless the engine
    already has an image under that name (a real pull, or an earlier session's stand-in)."""
    for name, tag in STANDIN_TAGS.items():
        if tag in engine.built or engine.has_image(tag):
            continue
        engine.build(tag, STANDINS / name, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")


def docker_engine_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Body of the session fixture ``docker_engine`` (tests/e2e/conftest.py registers it)."""
    docker = require("docker")
    if os.geteuid() != 0 and not _answers(docker):
        missing("no Docker engine answers and starting dockerd needs root")
    engine = start_engine(docker, tmp_path_factory.mktemp("dockerd"))
    try:
        ensure_base_image(engine)
        yield engine
    finally:
        for step, seconds in sorted(engine.timings.items()):
            print(f"docker timing: {step}: {seconds:.1f} s")
        stop_engine(engine)
