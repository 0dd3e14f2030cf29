"""Service settings from ``BNAAS_*`` environment variables, built by the app factory."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be told; each field is also ``BNAAS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BNAAS_", extra="ignore")

    store: str = Field(
        "sqlite:///./data/bnaas.db",
        description="memory://, sqlite:///relative/path or sqlite:////absolute/path",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="request body limit (413)")
    idempotency_ttl_s: float = Field(24 * 3600, gt=0, description="how long retries are answered")
    stats_header_max_features: int = Field(
        1024, ge=0, description="npy fit responses carry batch statistics in headers up to this C"
    )
