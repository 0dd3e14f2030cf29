"""Service settings from ``BNAAS_*`` environment variables, built by the app factory."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be told; each field is also ``BNAAS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BNAAS_", extra="ignore")

    def key_list(self) -> list[str]:
        """The configured API keys (empty: no authentication)."""
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    store: str = Field(
        "sqlite:///./data/bnaas.db",
        description="sqlite:///relative/path or sqlite:////absolute/path (embedded, one host), "
        "redis://[:password@]host:port/db or rediss:// (replicas), memory:// (tests, one worker)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="array backend: cpu (NumPy + C kernels), cuda (CuPy; refuses to start "
        "without a GPU), auto (CuPy when a GPU is usable, else cpu; /readyz says which)",
    )
    cuda_kernels: bool = Field(
        False,
        description="on a GPU, compute with bncore's own CUDA kernels instead of CuPy's generic "
        "operations (off by default until they have been measured on a GPU)",
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="request body limit (413)")
    idempotency_ttl_s: float = Field(24 * 3600, gt=0, description="how long retries are answered")
    api_keys: str = Field(
        "",
        description="comma-separated API keys; when set, data routes need one "
        "(Authorization: Bearer KEY or X-API-Key) and each key sees only its own sessions",
    )
    stats_header_max_features: int = Field(
        1024, ge=0, description="npy fit responses carry batch statistics in headers up to this C"
    )

    # --- HTTP server edge: connection limits, timeouts, access log (service/server.py) ---
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: all interfaces)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    workers: int = Field(
        1,
        ge=1,
        description="server processes sharing the port (and the store: memory:// refuses more "
        "than 1; set BNAAS_WORKERS yourself when starting uvicorn by hand)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="server log level"
    )
    access_log: bool = Field(False, description="log one line per request (costs ~0.15 ms each)")
    max_connections: int = Field(
        1000,
        ge=1,
        description="open connections per worker; beyond it an idle keep-alive connection is "
        "closed to make room, and only when none is idle is the new one refused (503)",
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0, description="an idle keep-alive (or new, silent) connection is closed after this"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="time from a request's first byte to the end of its headers (408)"
    )
    body_timeout_s: float = Field(
        20.0,
        gt=0,
        description="a request body that brings fewer than BNAAS_BODY_MIN_RATE bytes/s over a "
        "window of this many seconds (nothing at all included) is cut off with 408",
    )
    body_min_rate: int = Field(
        1024, ge=0, description="bytes/s a request body must sustain (see BNAAS_BODY_TIMEOUT_S)"
    )
    max_header_bytes: int = Field(
        32 * 1024, gt=0, description="request line plus header section, in bytes (431 beyond)"
    )
    max_headers: int = Field(100, gt=0, description="header fields per request (431 beyond)")
    max_request_line_bytes: int = Field(
        8 * 1024, gt=0, description="request target (path and query) in bytes (414 beyond)"
    )
    linger_s: float = Field(
        2.0,
        ge=0,
        description="after the server refuses a request (408, 414, 431, 503), how long it reads "
        "and drops the rest of it so that the client gets to read the answer",
    )
    graceful_shutdown_s: float = Field(
        10.0, ge=0, description="on SIGTERM, how long requests in flight may take to finish"
    )

    # --- request decoding and authentication (codecs, auth) ---
    max_inflate_ratio: int = Field(
        100,
        ge=0,
        description="a gzip/deflate body may inflate to at most this many times its compressed "
        "size (413 beyond; bodies inflating to under 1 MiB are exempt; 0: no ratio bound), "
        "besides BNAAS_MAX_BODY_BYTES, which also bounds the inflated size",
    )

    # --- stores, commits and history (service/stores, service/commit.py) ---
    store_timeout_s: float = Field(
        5.0,
        gt=0,
        description="longest wait for the store (a connection, the write lock, a reply) before "
        "a request answers 503 with Retry-After",
    )
    store_pool_size: int = Field(
        4, ge=1, le=64, description="store connections per worker process (SQLite readers)"
    )
    commit_retries: int = Field(
        16,
        ge=0,
        le=1000,
        description="times a commit re-reads and recombines after another process moved the "
        "session's version, before it answers 503",
    )
    history_recent: int = Field(
        100, ge=0, description="newest fits per session kept in full in the history (0: none)"
    )
    history_every: int = Field(
        10, ge=1, description="older fits keep a summary-only entry for every k-th version"
    )
    history_older: int = Field(
        1000, ge=0, description="summary-only history entries kept per session"
    )
    history_max_values: int = Field(
        1 << 22,
        ge=1,
        description="per-channel values kept in full history entries per session (~5 per "
        "channel per fit): wide sessions keep fewer full entries, at least one",
    )

    # --- hot routes: inline below a body size (service/routes/hot.py) ---
    inline_max_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="transform, fit and V2 infer bodies (decompressed) up to this size are "
        "decoded and computed on the event loop (no thread-pool hop); larger ones run in the "
        "thread pool. A small fit awaits its durable commit on the loop (SQLite and memory "
        "stores: the transaction runs in another thread); on Redis it waits in the thread pool",
    )

    # --- observability: metrics and dashboard ---
    metrics_dir: str = Field(
        "",
        description="parent of the Prometheus multiprocess directory that `bnaas serve` makes "
        "fresh at each start and removes at exit (empty: the system temp directory); an "
        "explicit PROMETHEUS_MULTIPROC_DIR is used as is (emptied at start)",
    )
    metrics_drift_sessions: int = Field(
        100,
        ge=0,
        le=100_000,
        description="at most this many sessions (those with drift_metrics, first come, "
        "process-wide) get drift gauges; bounds the label cardinality",
    )
    ui_enabled: bool = Field(True, description="serve the dashboard at /ui")
    ui_poll_ms: int = Field(
        2000, ge=200, le=600_000, description="how often the dashboard polls for new fits"
    )
