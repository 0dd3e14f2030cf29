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
    max_inflate_ratio: int = Field(
        100,
        ge=0,
        description="a gzip/deflate body may inflate to at most this many times its compressed "
        "size (413 beyond; bodies inflating to under 1 MiB are exempt; 0: no ratio bound), "
        "besides BNAAS_MAX_BODY_BYTES, which also bounds the inflated size",
    )

    # --- stores, commits and history (service/stores, service/commit.py) ---

    # --- observability: metrics and dashboard ---
