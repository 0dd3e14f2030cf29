"""The HTTP edge against hostile and unusual clients, on real ``bnaas serve`` processes and
raw sockets: lying and slow clients meet deadlines, oversized heads meet 431/414, idle
connections give way, an h2c upgrade offer (Java's HttpClient default) is answered as
HTTP/1.1, and none of it leaves a 500 or a traceback in the server log."""

from __future__ import annotations

import contextlib
import io
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

# Short deadlines keep the file fast; a missing answer still fails by the socket timeout.
HOSTILE_ENV = {
    "BNAAS_HEADER_TIMEOUT_S": "1",
    "BNAAS_BODY_TIMEOUT_S": "1",
    "BNAAS_KEEPALIVE_TIMEOUT_S": "60",
    "BNAAS_MAX_CONNECTIONS": "50",
}
WAIT_S = 10.0  # far beyond every configured deadline: the bound for "the server answered"

# What a stock java.net.http.HttpClient (and curl --http2) sends on cleartext.
H2C_OFFER = (
    b"Connection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\n"
    b"HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n"
)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("edge") / "server.log"
    server = Server("memory://", log=log, env=HOSTILE_ENV, log_level="info").start()
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket timeout: the test fails)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Exactly one Content-Length response from a keep-alive connection (byte by byte up to
    the blank line, so that a pipelined answer behind it stays in the socket)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"connection closed after {head!r}"
        head += byte
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    body = b""
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(int(headers["content-length"]) - len(body))
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def trickle(sock: socket.socket, piece: bytes | None = None) -> None:
    """Send a few bytes every 0.1 s until the server answers or closes (or WAIT_S passes)."""
    for i in range(int(WAIT_S / 0.1)):
        if select.select([sock], [], [], 0.1)[0]:
            return
        try:
            sock.sendall(piece if piece is not None else b"X-Slow-%d: 1\r\n" % i)
        except OSError:
            return


def send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    """Send what the server lets us; it may stop reading and close once it has refused."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw.split()[1])


def problem_of(raw: bytes) -> dict[str, object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower()
    problem: dict[str, object] = orjson.loads(body)
    return problem


def assert_healthy(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=WAIT_S).status_code == 200


def assert_clean_log(server: Server) -> None:
    assert server.log is not None
    text = server.log.read_text()
    assert "Traceback" not in text
    assert "Exception in ASGI application" not in text
    assert '" 500' not in text and "unhandled error" not in text


def create_session(server: Server) -> str:
    resp = httpx.post(f"{server.url}/v1/sessions", json={"num_features": 3}, timeout=WAIT_S)
    assert resp.status_code == 201
    return str(resp.json()["id"])


# --- slow and lying clients ---


def test_body_shorter_than_its_content_length_gets_408_and_a_close(edge: Server) -> None:
    with connect(edge) as sock:
        sock.sendall(
            b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"num_features"'
        )
        raw = read_until_closed(sock)
        assert status_of(raw) == 408
        assert "body" in str(problem_of(raw)["detail"])
    assert_healthy(edge)
    assert_clean_log(edge)


def test_header_trickle_is_cut_off_by_the_header_deadline(edge: Server) -> None:
    with connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        trickle(sock)  # one header line every 0.1 s, never the blank line
        raw = read_until_closed(sock)
        assert status_of(raw) == 408
        assert "head" in str(problem_of(raw)["detail"])
    assert_healthy(edge)


def test_body_trickle_below_the_minimum_rate_is_cut_off(edge: Server) -> None:
    sid = create_session(edge)
    with connect(edge) as sock:
        sock.sendall(
            f"POST /v1/sessions/{sid}/fit HTTP/1.1\r\nHost: t\r\n"
            "Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n".encode()
        )
        trickle(sock, b" ")  # 10 bytes/s, far under BNAAS_BODY_MIN_RATE
        raw = read_until_closed(sock)
        assert status_of(raw) == 408
    assert httpx.get(f"{edge.url}/v1/sessions/{sid}", timeout=WAIT_S).json()["version"] == 1
    assert_clean_log(edge)


def test_client_that_disconnects_mid_body_is_logged_at_info_without_500(edge: Server) -> None:
    sid = create_session(edge)
    for path in (f"/v1/sessions/{sid}/fit", f"/v2/models/{sid}/infer", "/v1/sessions"):
        with connect(edge) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
                + b'{"data": [[1, 2, 3],'
            )
            time.sleep(0.2)
    assert edge.log is not None
    deadline = time.monotonic() + WAIT_S
    while edge.log.read_text().count("client disconnected before sending the whole body") < 3:
        assert time.monotonic() < deadline, edge.log.read_text()
        time.sleep(0.1)
    lines = edge.log.read_text().splitlines()
    assert any(line.startswith("INFO:") and f"/v1/sessions/{sid}/fit" in line for line in lines)
    assert_clean_log(edge)
    assert_healthy(edge)


def test_client_that_leaves_before_the_answer_is_logged_at_info_without_500(edge: Server) -> None:
    resp = httpx.post(f"{edge.url}/v1/sessions", json={"num_features": 256}, timeout=WAIT_S)
    sid = resp.json()["id"]
    x = np.random.default_rng(0).normal(size=(4096, 256)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    head = (
        f"POST /v1/sessions/{sid}/fit HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: application/x-npy\r\nContent-Length: {len(buf.getvalue())}\r\n\r\n"
    )
    assert edge.log is not None
    # Whether the server notices before its answer is written is a race: a few tries.
    for _ in range(5):
        with connect(edge) as sock:
            sock.sendall(head.encode() + buf.getvalue())
        time.sleep(0.5)
        if "before the answer" in edge.log.read_text():
            break
    assert f'"POST /v1/sessions/{sid}/fit" client disconnected before the answer' in (
        edge.log.read_text()
    )
    assert_clean_log(edge)


# --- connections ---


def test_200_idle_keepalive_connections_do_not_stop_healthz(edge: Server) -> None:
    idle = []
    for _ in range(200):  # BNAAS_MAX_CONNECTIONS is 50: the oldest idle ones must give way
        sock = connect(edge)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        idle.append(sock)
    try:
        assert httpx.get(f"{edge.url}/healthz", timeout=1.0).status_code == 200
        closed = 0
        for sock in idle:
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
        assert closed >= 150
    finally:
        for sock in idle:
            sock.close()


def test_connections_are_refused_with_503_only_when_none_is_idle(tmp_path: Path) -> None:
    env = {"BNAAS_MAX_CONNECTIONS": "8", "BNAAS_HEADER_TIMEOUT_S": "60"}
    server = Server("memory://", log=tmp_path / "server.log", env=env).start()
    busy = []
    try:
        for _ in range(8):  # each one in the middle of its request line
            sock = connect(server)
            sock.sendall(b"GET /heal")
            busy.append(sock)
        time.sleep(0.5)  # let the server read every partial request line (busy, not idle)
        with connect(server) as late:
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            raw = read_until_closed(late)
        assert status_of(raw) == 503
        assert b"retry-after: 1" in raw.lower()
        for sock in busy:  # none of the busy connections was closed to make room
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in busy:
            sock.close()
    try:
        assert_healthy(server)
    finally:
        server.stop()


# --- oversized heads ---


def test_10_mib_header_gets_431_and_the_server_stays_up(edge: Server) -> None:
    with connect(edge) as sock:
        big = b"X-Big: " + b"a" * (10 << 20) + b"\r\n"
        send_ignoring_reset(sock, b"GET /healthz HTTP/1.1\r\n" + big + b"\r\n")
        raw = read_until_closed(sock)
        assert status_of(raw) == 431
    assert_healthy(edge)
    assert_clean_log(edge)


def test_10000_headers_of_1_kb_get_431(edge: Server) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(10_000))
    with connect(edge) as sock:
        send_ignoring_reset(sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        raw = read_until_closed(sock)
        assert status_of(raw) == 431
    assert_healthy(edge)


def test_more_header_fields_than_allowed_get_431(edge: Server) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(101))  # small, but 101 of them
    with connect(edge) as sock:
        send_ignoring_reset(sock, b"GET /healthz HTTP/1.1\r\n" + headers + b"\r\n")
        raw = read_until_closed(sock)
        assert status_of(raw) == 431
        assert "header fields" in str(problem_of(raw)["detail"])


def test_overlong_request_line_gets_414(edge: Server) -> None:
    with connect(edge) as sock:
        target = b"/healthz?q=" + b"a" * 20_000
        send_ignoring_reset(sock, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = read_until_closed(sock)
        assert status_of(raw) == 414
    assert_healthy(edge)


def test_request_within_the_limits_is_served(edge: Server) -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(90))  # 90 x 200 B
    with connect(edge) as sock:
        target = b"/healthz?q=" + b"a" * 4000
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        assert read_response(sock)[0] == 200


def test_pipelined_request_after_a_large_body_is_not_taken_for_a_large_head(edge: Server) -> None:
    body = b'{"num_features": 3}' + b" " * 40_000  # more than BNAAS_MAX_HEADER_BYTES (32 KiB)
    with connect(edge) as sock:
        sock.sendall(
            b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body + b"GET /healthz HTTP/1.1\r\nHo"
        )
        time.sleep(0.2)
        sock.sendall(b"st: t\r\n\r\n")
        assert read_response(sock)[0] == 201
        assert read_response(sock)[0] == 200


# --- any HTTP/1.1 client ---


@pytest.mark.parametrize("writes", ["one write", "head then body"])
def test_post_offering_h2c_upgrade_creates_a_session(edge: Server, writes: str) -> None:
    body = b'{"num_features": 3, "eps": 0.001}'
    head = (
        b"POST /v1/sessions HTTP/1.1\r\nContent-Length: %d\r\nHost: 127.0.0.1\r\n"
        b"User-Agent: Java-http-client/21.0.5\r\nContent-Type: application/json\r\n"
        % len(body)
        + H2C_OFFER
        + b"\r\n"
    )
    with connect(edge) as sock:
        if writes == "one write":
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            time.sleep(0.1)
            sock.sendall(body)
        status, headers, answer = read_response(sock)
        assert status == 201
        assert "upgrade" not in headers
        assert orjson.loads(answer)["config"]["eps"] == 0.001
        # The connection stays an HTTP/1.1 keep-alive connection.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + H2C_OFFER + b"\r\n")
        assert read_response(sock)[0] == 200


H2C_VARIANTS = {
    "chunked body": (
        b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n" + H2C_OFFER + b"\r\n"
        b"13\r\n" + b'{"num_features": 3}' + b"\r\n0\r\n\r\n"
    ),
    "HTTP/1.0": (
        b"POST /v1/sessions HTTP/1.0\r\nHost: t\r\nContent-Length: 19\r\n"
        b"Content-Type: application/json\r\n" + H2C_OFFER + b"\r\n" + b'{"num_features": 3}'
    ),
}


@pytest.mark.parametrize("variant", list(H2C_VARIANTS))
def test_h2c_offer_with_other_body_framings_is_answered_as_http_1(
    edge: Server, variant: str
) -> None:
    with connect(edge) as sock:
        sock.sendall(H2C_VARIANTS[variant])
        status, _, answer = read_response(sock)
    assert status == 201
    assert orjson.loads(answer)["config"]["num_features"] == 3


def test_graceful_shutdown_ends_idle_and_incomplete_requests_without_500(tmp_path: Path) -> None:
    env = {"BNAAS_GRACEFUL_SHUTDOWN_S": "1", "BNAAS_BODY_TIMEOUT_S": "60"}
    server = Server("memory://", log=tmp_path / "server.log", env=env, log_level="info").start()
    try:
        with connect(server) as idle, connect(server) as uploading:
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(idle)[0] == 200
            uploading.sendall(
                b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            time.sleep(0.3)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal once it has shut down
            assert server.proc.wait(WAIT_S) in (0, -signal.SIGTERM)
            assert idle.recv(1) == b""
            assert status_of(read_until_closed(uploading)) == 503
    finally:
        server.stop()
    assert_clean_log(server)
    assert server.log is not None
    assert "Finished server process" in server.log.read_text()


def test_access_log_is_off_by_default(edge: Server) -> None:
    assert_healthy(edge)
    assert edge.log is not None
    assert '"GET /healthz HTTP/1.1" 200' not in edge.log.read_text()


def test_two_workers_serve_with_the_edge_limits_and_the_access_log_on(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"BNAAS_ACCESS_LOG": "true"}
    store = f"sqlite:///{tmp_path / 'bnaas.db'}"
    server = Server(store, workers=2, log=log, env=env, log_level="info").start()
    try:
        assert create_session(server)
        with connect(server) as sock:
            send_ignoring_reset(sock, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_of(read_until_closed(sock)) == 414
        assert_healthy(server)
        assert '"GET /healthz HTTP/1.1" 200' in log.read_text()
    finally:
        server.stop()
