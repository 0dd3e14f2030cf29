"""The images and the compose stack, built and run on a real Docker engine.

Each image is built once per session (the layer cache makes a rebuild on a warm engine cheap);
CI's engine reaches no registry, so the base is ``local/debian:bookworm`` and the compose file's
``redis:7`` and ``nginx:1.27`` are local stand-ins (deploy/standins/).
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import free_port
from tests.e2e.docker_engine import BASE_IMAGE, REPO, Engine, ensure_standins, run_command
from tests.tools import require

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGE = "bnaas:test"
CUDA_IMAGE = "bnaas:test-cuda"
NPY = "application/x-npy"
UID = 10001
REDIS_STORE = REPO / "service" / "stores" / "redis.py"
# A small limit, so that the proxy's refusal is cheap to provoke.
COMPOSE_MAX_BODY = 1 << 20


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready within {timeout} s")


@pytest.fixture(scope="module")
def image(docker_engine: Engine) -> str:
    docker_engine.build(IMAGE, REPO, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--target", "cpu")
    return IMAGE


@dataclass
class Container:
    name: str
    url: str


StartContainer = Callable[[str], Container]


@pytest.fixture
def run_container(docker_engine: Engine, image: str) -> Iterator[StartContainer]:
    """Starts containers of the image on one volume (``run_container("a")``), published on a
    free loopback port; all of them and the volume are removed afterwards."""
    name = f"bnaas-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    docker_engine.run("volume", "create", volume)
    containers: list[str] = []

    def start(suffix: str) -> Container:
        cname = f"{name}-{suffix}"
        docker_engine.run(
            "run", "-d", "--name", cname, "-p", "127.0.0.1::8000", "-v", f"{volume}:/data", image
        )
        containers.append(cname)
        port = docker_engine.run("port", cname, "8000/tcp").stdout.split(":")[-1].strip()
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        return Container(cname, url)

    try:
        yield start
    finally:
        for cname in containers:
            docker_engine.run("rm", "-f", cname, check=False)
        docker_engine.run("volume", "rm", "-f", volume, check=False)


def test_image_runs_as_a_numeric_non_root_user(docker_engine: Engine, image: str) -> None:
    user = docker_engine.run("inspect", "-f", "{{.Config.User}}", image).stdout.strip()
    assert user == f"{UID}:{UID}"
    uid = docker_engine.run("run", "--rm", image, "id", "-u").stdout.strip()
    assert uid == str(UID)


def stop_seconds(engine: Engine, name: str) -> float:
    """How long ``docker stop`` took, with a grace period so long that only a container that
    acts on SIGTERM stops in time."""
    t0 = time.monotonic()
    engine.run("stop", "--time", "30", name)
    return time.monotonic() - t0


def test_docker_stop_ends_the_server_gracefully_within_2_s(
    docker_engine: Engine, run_container: StartContainer
) -> None:
    container = run_container("stop")
    elapsed = stop_seconds(docker_engine, container.name)
    code = docker_engine.run("inspect", "-f", "{{.State.ExitCode}}", container.name).stdout
    assert code.strip() == "0"  # not killed at the end of the grace period (137)
    logs = docker_engine.run("logs", container.name)
    assert "Application shutdown complete" in logs.stdout + logs.stderr  # drained, not cut off
    assert elapsed < 2.0, f"docker stop took {elapsed:.2f} s"


def test_docker_stop_while_the_server_is_still_starting_is_quick(
    docker_engine: Engine, image: str
) -> None:
    name = f"bnaas-test-{uuid.uuid4().hex[:8]}"
    docker_engine.run("run", "-d", "--name", name, image)
    try:
        # Before Python has imported anything: PID 1 must still pass the signal on.
        elapsed = stop_seconds(docker_engine, name)
    finally:
        docker_engine.run("rm", "-f", "-v", name, check=False)
    assert elapsed < 2.0, f"docker stop took {elapsed:.2f} s"


def test_sessions_survive_a_new_container_on_the_same_volume(
    docker_engine: Engine, run_container: StartContainer
) -> None:
    first = run_container("first")
    batch = np.random.default_rng(3).normal(2, 3, (16, 4)).astype(np.float32)
    with httpx.Client(base_url=first.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"num_features": 4}).json()["id"]
        r = c.post(
            f"/v1/sessions/{sid}/fit?output=false",
            content=npy(batch),
            headers={"content-type": NPY},
        )
        assert r.status_code == 200
    docker_engine.run("rm", "-f", first.name)

    second = run_container("second")
    stats = httpx.get(f"{second.url}/v1/sessions/{sid}/stats", timeout=30).json()
    assert stats["num_batches_tracked"] == 1
    np.testing.assert_allclose(stats["population"]["mean"], batch.astype(np.float64).mean(0))


def test_cuda_target_builds_with_cupy(docker_engine: Engine) -> None:
    docker_engine.build(
        CUDA_IMAGE, REPO, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--target", "cuda"
    )
    env = docker_engine.run("inspect", "-f", "{{json .Config.Env}}", CUDA_IMAGE).stdout
    assert "BNAAS_DEVICE=cuda" in env
    # No GPU here: importing CuPy and loading NVRTC (which needs no driver) is what can be run.
    version = docker_engine.run(
        "run",
        "--rm",
        CUDA_IMAGE,
        "python3",
        "-c",
        "import cupy; from cupy_backends.cuda.libs import nvrtc; print(nvrtc.getVersion()[0])",
    ).stdout.strip()
    assert version == "12"


# --- the compose stack: redis + two replicas + nginx ----------------------------------------


@dataclass
class Stack:
    engine: Engine
    compose: str
    project: str
    env: dict[str, str]
    url: str
    store: str

    def __call__(self, *args: str, timeout: float = 300) -> str:
        cmd = [self.compose, "-f", str(REPO / "docker-compose.yml"), "-p", self.project, *args]
        return run_command(cmd, timeout=timeout, env=self.env).stdout

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # compose v1's naming


@pytest.fixture(scope="module")
def stack(docker_engine: Engine, image: str) -> Iterator[Stack]:
    """``docker-compose up`` on the image under test, published on a free loopback port. The
    replicas use the Redis store once it exists on this branch; before that, the SQLite store
    on the volume both replicas share (one host, so SQLite's file locks hold)."""
    compose = require("docker-compose")
    ensure_standins(docker_engine)
    port = free_port()
    store = "redis://redis:6379/0" if REDIS_STORE.exists() else "sqlite:////data/bnaas.db"
    env = {
        "BNAAS_IMAGE": image,
        "BNAAS_PORT": str(port),
        "BNAAS_BIND_ADDRESS": "127.0.0.1",
        "BNAAS_STORE": store,
        "BNAAS_HEALTH_INTERVAL": "1s",
        "BNAAS_MAX_BODY_BYTES": str(COMPOSE_MAX_BODY),
        "REDIS_APPENDFSYNC": "always",
    }
    s = Stack(
        docker_engine, compose, f"bnaastest{os.getpid()}", env, f"http://127.0.0.1:{port}", store
    )
    try:
        t0 = time.monotonic()
        s("up", "-d")
        wait_ready(s.url)
        docker_engine.timings["compose up"] = time.monotonic() - t0
        yield s
    finally:
        s("down", "-v", "--remove-orphans", "--timeout", "5")


def test_compose_body_limit_is_the_services_and_answers_problem_json(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.url}/v1/sessions",
        content=b"0" * (COMPOSE_MAX_BODY + 1),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "urn:bnaas:problem:body-too-large"


def fit_until_acknowledged(client: httpx.Client, sid: str, body: bytes, key: str) -> None:
    """One fit, retried with the same Idempotency-Key until some replica acknowledges it."""
    for _ in range(60):
        try:
            r = client.post(
                f"/v1/sessions/{sid}/fit?output=false",
                content=body,
                headers={"content-type": NPY, "idempotency-key": key},
            )
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if r.status_code in (502, 503, 504):
            time.sleep(0.2)
            continue
        assert r.status_code == 200, r.text
        return
    raise AssertionError(f"fit {key} was never acknowledged")


def replica_fits(stack: Stack, service: str) -> float:
    """The fits ``service`` has applied (its own /metrics, read inside its container)."""
    text = stack.engine.run(
        "exec",
        stack.container(service),
        "/opt/bnaas/bin/python3",
        "-c",
        "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics').read().decode())",
    ).stdout
    found = re.search(r'^bnaas_operations_total\{op="fit"\} (\S+)$', text, re.M)
    assert found is not None, text[-2000:]
    return float(found.group(1))


@pytest.mark.skipif(
    not REDIS_STORE.exists(),
    reason="needs the Redis store (service/stores/redis.py, branch redis): the replicas share it",
)
def test_compose_fits_through_the_balancer_are_exact_when_a_replica_is_killed(
    stack: Stack,
) -> None:
    threads, fits, rows, features = 4, 24, 8, 3
    rng = np.random.default_rng(7)
    batches = rng.normal(1, 2, (threads, fits, rows, features)).astype(np.float32)
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"num_features": features}).json()["id"]
    done = threading.Semaphore(0)

    def client(t: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=30) as c:
            for f in range(fits):
                fit_until_acknowledged(c, sid, npy(batches[t, f]), f"{sid}-{t}-{f}")
                done.release()

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for _ in range(threads * fits // 3):  # a third of the fits acknowledged, then the kill
        done.acquire()
    # The balancer keeps a session on one replica: the other has applied none of its fits.
    applied = {name: replica_fits(stack, name) for name in ("bnaas-1", "bnaas-2")}
    serving = max(applied, key=applied.__getitem__)
    assert sorted(applied.values())[0] == 0, applied
    stack.engine.run("kill", "--signal", "KILL", stack.container(serving))
    for w in workers:
        w.join(300)
    assert not any(w.is_alive() for w in workers)

    stats = httpx.get(f"{stack.url}/v1/sessions/{sid}/stats", timeout=30).json()
    total = threads * fits
    assert stats["num_batches_tracked"] == total
    assert stats["population"]["count"] == [total * rows] * features
    np.testing.assert_allclose(
        stats["population"]["mean"],
        batches.astype(np.float64).reshape(-1, features).mean(0),
        rtol=1e-12,
    )
    stack.engine.run("start", stack.container(serving))


def test_compose_down_then_up_keeps_the_sessions(stack: Stack) -> None:
    batch = np.random.default_rng(5).normal(0, 1, (8, 2)).astype(np.float32)
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"num_features": 2}).json()["id"]
        r = c.post(
            f"/v1/sessions/{sid}/fit?output=false",
            content=npy(batch),
            headers={"content-type": NPY},
        )
        assert r.status_code == 200
    stack("down", "--timeout", "5")  # the volumes stay
    stack("up", "-d")
    wait_ready(stack.url)
    r = httpx.get(f"{stack.url}/v1/sessions/{sid}", timeout=30)
    assert r.status_code == 200
    assert r.json()["num_batches_tracked"] == 1
