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
        description="memory://, sqlite:///relative/path or sqlite:////absolute/path",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
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

    # --- request decoding and authentication (codecs, auth) ---

    # --- stores, commits and history (service/stores, service/commit.py) ---

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
