"""The HTTP edge: uvicorn's httptools protocol with the limits a production server has, and
the uvicorn configuration built from :class:`Settings`.

``EdgeProtocol`` adds, on top of uvicorn's ``HttpToolsProtocol``:

- header section size and count (431) and request target length (414);
- a deadline for the request line and headers, and a minimum rate for the body (408), so a
  client that promises more body than it sends, or trickles, is cut off;
- an idle timeout for new connections too (uvicorn only arms it after a first response);
- a cap on open connections per worker that closes an idle keep-alive connection to make room
  and refuses (503) only when none is idle;
- requests that offer a protocol upgrade (Java's ``HttpClient`` offers ``h2c`` on every
  request) answered as plain HTTP/1.1: httptools skips the body of any request that asks for
  an upgrade (Kludex/uvicorn#2722), so the head is replayed without the upgrade headers;
- client disconnects logged at info level, once, as such.

The common path (a small request in one read) pays a few attribute updates and no timer: a
deadline is armed only when a request is still incomplete after a read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from service.errors import PROBLEM_JSON, problem_body
from service.settings import Settings

__all__ = ["EdgeLimits", "EdgeProtocol", "run", "uvicorn_options"]

log = logging.getLogger("uvicorn.error")

# Where the current request on a connection stands.
_IDLE, _HEADERS, _BODY = 0, 1, 2

# Answers the edge gives itself, before or instead of the app: (problem slug, title).
_EDGE_PROBLEMS = {
    400: ("malformed-request", "Malformed HTTP request"),
    408: ("request-timeout", "Request not received in time"),
    414: ("request-target-too-long", "Request target too long"),
    431: ("header-fields-too-large", "Request header fields too large"),
    503: ("unavailable", "Server busy or shutting down"),
}


@dataclass(frozen=True)
class EdgeLimits:
    """The limits one worker enforces; picklable, so ``--workers`` carries it to each process."""

    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    body_min_rate: int = 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_request_line_bytes: int = 8 * 1024
    linger_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_connections=settings.max_connections,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            body_min_rate=settings.body_min_rate,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            max_request_line_bytes=settings.max_request_line_bytes,
            linger_s=settings.linger_s,
        )

    @property
    def body_window_bytes(self) -> int:
        """Bytes a body must bring per window; a window with none always ends the request."""
        return max(1, int(self.body_min_rate * self.body_timeout_s))


class _Refusal(Exception):
    """Raised in a parser callback: answer ``status`` and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits, deadlines and upgrades ignored (see module)."""

    _refusal_logged_at = float("-inf")  # per worker process: refusals at capacity are logged

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: EdgeLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._phase = _IDLE
        self._deadline: asyncio.TimerHandle | None = None
        # Header bytes seen in reads that held nothing else; -1: the request began in this read.
        self._head_seen = 0
        self._read_len = 0
        self._window_bytes = 0  # body bytes since the body deadline was last armed
        self._upgrade_ignored = False
        self._upgrade_method = b""
        self._upgrade_line_end = b""
        self._closed_by_us = False

    # --- connection ---

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._shed_idle():
            now = self.loop.time()
            if now - EdgeProtocol._refusal_logged_at >= 1.0:  # one line a second at most
                EdgeProtocol._refusal_logged_at = now
                log.warning(
                    "refusing connections: %d open, none idle (BNAAS_MAX_CONNECTIONS)",
                    len(self.connections) - 1,
                )
            self._answer_and_close(503, f"{self.limits.max_connections} connections are busy")
            return
        # A connection that never sends a byte is as idle as a kept-alive one.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        cycle = self.cycle
        if not self._closed_by_us and cycle is not None:
            if not cycle.response_complete:
                what = "before sending the whole body" if cycle.more_body else "before the answer"
            elif isinstance(exc, BrokenPipeError):  # the answer was written to a closed socket
                what = "before the answer was delivered"
            else:
                what = ""
            if what:
                log.info(
                    '%s - "%s %s" client disconnected %s',
                    _client(self.client),
                    cycle.scope["method"],
                    cycle.scope["path"],
                    what,
                )
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Graceful shutdown: idle connections close now (uvicorn), answers in progress finish.
        A request whose body is still coming in when the grace period is nearly over gets 503,
        so its task ends quietly instead of being cancelled mid-read (a 500 and a traceback)."""
        super().shutdown()
        grace = self.config.timeout_graceful_shutdown
        if self._phase == _BODY and grace is not None:
            self.loop.call_later(max(grace - 0.5, 0.0), self._stop_reading_body)

    def _stop_reading_body(self) -> None:
        if self._phase == _BODY and not self._closed_by_us:
            self._refuse(503, "the server is shutting down; the request body did not arrive")
            self.transport.close()  # no lingering: the server waits for its connections

    def _is_idle(self) -> bool:
        cycle = self.cycle
        return (
            self._phase == _IDLE
            and (cycle is None or cycle.response_complete)
            and not self.pipeline
            and not self.transport.is_closing()
        )

    def _shed_idle(self) -> bool:
        """Close one idle connection of this worker; False when every one is busy."""
        for other in self.connections:
            if other is not self and isinstance(other, EdgeProtocol) and other._is_idle():
                other._closed_by_us = True
                other.transport.close()
                return True
        return False

    # --- reads ---

    def data_received(self, data: bytes) -> None:
        if self._closed_by_us:
            return  # the rest of a refused request, drained until the connection closes
        self._unset_keepalive_if_required()
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._replay_without_upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refusal):
                self._refuse(cause.status, cause.detail)
            else:
                self._refuse(400, f"invalid HTTP request: {exc}")
            return
        if self._phase == _HEADERS:
            if self._head_seen < 0:
                self._head_seen = 0
            else:
                self._head_seen += len(data)
                if self._head_seen > self.limits.max_header_bytes:
                    self._refuse(431, f"header section over {self.limits.max_header_bytes} bytes")
                    return
            if self._deadline is None:
                self._arm(self.limits.header_timeout_s)
        elif self._phase == _BODY and self._deadline is None:
            self._window_bytes = 0
            self._arm(self.limits.body_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEADERS
        self._head_seen = -1

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line_bytes:
            raise _Refusal(414, f"request target over {self.limits.max_request_line_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        if self._deadline is not None:  # inline: this runs on every request
            self._cancel_deadline()
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            raise _Refusal(431, f"more than {limits.max_headers} header fields")
        if self._head_seen + self._read_len > limits.max_header_bytes:
            # Only then is the exact size worth computing: this read may also hold body bytes.
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limits.max_header_bytes:
                raise _Refusal(431, f"header section over {limits.max_header_bytes} bytes")
        if self.parser.should_upgrade():
            method = self.parser.get_method()
            if method == b"CONNECT":
                raise _Refusal(400, "CONNECT is not supported")
            # httptools skips the body of an upgrade request and raises HttpParserUpgrade
            # after the head: data_received replays the head without the upgrade.
            self._upgrade_ignored = True
            self._upgrade_line_end = b" HTTP/%s\r\n" % self.parser.get_http_version().encode()
            self._upgrade_method = method
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._window_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._deadline is not None:
            self._cancel_deadline()
        if self._upgrade_ignored:
            return
        super().on_message_complete()

    def _replay_without_upgrade(self, rest: bytes) -> None:
        """Parse the request again as if it had not offered an upgrade (h2c, websocket)."""
        self._upgrade_ignored = False
        self._phase = _IDLE
        head = [self._upgrade_method, b" ", self.url, self._upgrade_line_end]
        for name, value in self.headers:
            if name in (b"upgrade", b"http2-settings"):
                continue
            if name == b"connection":
                tokens = [
                    t.strip()
                    for t in value.split(b",")
                    if t.strip().lower() not in (b"upgrade", b"http2-settings", b"")
                ]
                if not tokens:
                    continue
                value = b", ".join(tokens)
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        # A fresh parser: after an upgrade, httptools' parser ignores whatever follows a
        # request that did not keep the connection alive (HTTP/1.0, Connection: close).
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn does
        self.data_received(b"".join(head) + rest)

    # --- deadlines ---

    def _arm(self, delay: float) -> None:
        self._deadline = self.loop.call_later(delay, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        limits = self.limits
        if self.flow.read_paused:
            # We stopped reading (the app has not taken the body yet, or a pipelined request
            # waits its turn): the client is not the slow one.
            self._window_bytes = 0
            self._arm(limits.body_timeout_s if self._phase == _BODY else limits.header_timeout_s)
        elif self._phase == _HEADERS:
            self._timeout(f"request head not received within {limits.header_timeout_s}s")
        elif self._phase == _BODY:
            cycle = self.cycle
            waiting_for_app = cycle is not None and cycle.waiting_for_100_continue
            if waiting_for_app or self._window_bytes >= limits.body_window_bytes:
                self._window_bytes = 0
                self._arm(limits.body_timeout_s)
            else:
                self._timeout(
                    f"request body: {self._window_bytes} bytes in {limits.body_timeout_s}s, "
                    f"under {limits.body_min_rate} bytes/s"
                )

    def _timeout(self, detail: str) -> None:
        log.info("%s - request timed out: %s", _client(self.client), detail)
        self._refuse(408, detail, logged=True)

    # --- answers of the edge itself ---

    def _refuse(self, status: int, detail: str, logged: bool = False) -> None:
        """Answer ``status`` unless a response is under way, tell the app the client is gone,
        and close the connection."""
        if not logged:
            log.info("%s - refused (%d): %s", _client(self.client), status, detail)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True  # the app's receive() answers http.disconnect
            cycle.message_event.set()
            if started:
                self._closed_by_us = True
                self.transport.close()
                return
        self._answer_and_close(status, detail)

    def _answer_and_close(self, status: int, detail: str) -> None:
        slug, title = _EDGE_PROBLEMS[status]
        body = problem_body(status, slug, title, detail, "")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: ",
            PROBLEM_JSON.encode(),
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n",
            b"retry-after: 1\r\n" if status == 503 else b"",
            b"\r\n",
            body,
        ]
        self._closed_by_us = True
        transport = self.transport
        transport.write(b"".join(content))
        if transport.can_write_eof():
            # Lingering close: closing with unread request bytes makes the kernel send a reset
            # that can destroy the answer before the client reads it. Half-close, drop what
            # still comes (data_received), close when the client does or after a while.
            transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(self.limits.linger_s, transport.close)
        else:
            transport.close()


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` from the service settings."""
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        # A partial of a module-level class pickles by reference, so --workers can spawn it.
        "http": functools.partial(EdgeProtocol, limits=EdgeLimits.from_settings(settings)),
        "ws": "none",  # no websocket routes: an Upgrade: websocket request is answered as HTTP
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
    }


def run(settings: Settings, app: str = "service.app:app_from_env") -> None:
    """Serve ``app`` (an import string of an app factory) until SIGTERM/SIGINT."""
    uvicorn.run(app, factory=True, **uvicorn_options(settings))
