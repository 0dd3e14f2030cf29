"""docker-compose.yml as docker-compose resolves it (no engine needed): the stack the issue
asks for, and one body limit for the proxy and the service."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.tools import require

REPO = Path(__file__).resolve().parents[2]
REPLICAS = ("bnaas-1", "bnaas-2")


def resolved(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker-compose config``: the file with variables substituted and anchors expanded."""
    compose = require("docker-compose")
    out = subprocess.run(
        [compose, "-f", str(REPO / "docker-compose.yml"), *args, "config"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return resolved()


def test_replicas_use_redis_and_wait_for_it_to_be_healthy(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in REPLICAS:
        replica = services[name]
        assert replica["environment"]["BNAAS_STORE"] == "redis://redis:6379/0"
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "readyz" in " ".join(replica["healthcheck"]["test"])
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]


def test_redis_keeps_an_append_only_file_on_a_volume(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert any(v.endswith(":/data") or ":/data:" in v for v in redis["volumes"])


def test_balancer_publishes_bnaas_port_after_both_replicas_are_healthy(
    config: dict[str, Any],
) -> None:
    lb = config["services"]["lb"]
    conditions = {name: dep["condition"] for name, dep in lb["depends_on"].items()}
    assert conditions == dict.fromkeys(REPLICAS, "service_healthy")
    assert lb["ports"] == ["0.0.0.0:8000:8000/tcp"]
    moved = resolved(env={"BNAAS_PORT": "9123", "BNAAS_BIND_ADDRESS": "127.0.0.1"})
    assert moved["services"]["lb"]["ports"] == ["127.0.0.1:9123:8000/tcp"]


def test_proxy_and_service_share_one_body_limit(config: dict[str, Any]) -> None:
    services = config["services"]
    default = str(Settings.model_fields["max_body_bytes"].default)
    assert services["lb"]["environment"]["BNAAS_MAX_BODY_BYTES"] == default
    for name in REPLICAS:
        assert services[name]["environment"]["BNAAS_MAX_BODY_BYTES"] == default
    template = (REPO / "deploy" / "nginx" / "bnaas.conf.template").read_text()
    assert "client_max_body_size ${BNAAS_MAX_BODY_BYTES};" in template


def test_gpu_profile_runs_the_cuda_target_on_an_nvidia_device() -> None:
    gpu = resolved("--profile", "gpu")["services"]["bnaas-gpu"]
    assert gpu["profiles"] == ["gpu"]  # not started by a plain `up`
    assert gpu["build"]["target"] == "cuda"
    assert gpu["environment"]["BNAAS_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
