"""Session stores: one interface (``base.Store``), several engines, opened from a URL."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import numpy as np

from service.stores.base import Replay, Session, Store
from service.stores.memory import MemoryStore
from service.stores.sqlite import SQLiteStore

__all__ = ["MemoryStore", "Replay", "SQLiteStore", "Session", "Store", "open_store"]


def open_store(url: str, idempotency_ttl_s: float = 86400.0, xp: ModuleType = np) -> Store:
    """``memory://`` or ``sqlite:///relative/path`` / ``sqlite:////absolute/path``."""
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryStore(idempotency_ttl_s)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"sqlite store URL needs a path: sqlite:///file.db, got {url!r}")
        return SQLiteStore(Path(path), idempotency_ttl_s, xp)
    raise ValueError(f"unknown store URL {url!r}: use memory:// or sqlite:///path")
