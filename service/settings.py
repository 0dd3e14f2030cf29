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
    workers: int = Field(
        1,
        ge=1,
        description="worker processes serving the store (`bnaas serve --workers` sets it; set it "
        "yourself when starting uvicorn by hand): memory:// refuses more than 1",
    )
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

    # --- observability: metrics and dashboard ---
