"""Session stores: one interface (``base.Store``), several engines, opened from a URL."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import numpy as np

from service.settings import Settings
from service.stores.base import HistoryPolicy, Session, Store, StoreOptions
from service.stores.memory import MemoryStore
from service.stores.sqlite import SQLiteStore

__all__ = [
    "MemoryStore",
    "SQLiteStore",
    "Session",
    "Store",
    "StoreOptions",
    "check_url",
    "open_store",
]

_SCHEMES = "memory://, sqlite:///path, redis://host:port/db or rediss://"


def check_url(url: str, workers: int = 1) -> None:
    """``ValueError`` with a clear message for a URL no store opens, or a store that cannot
    serve ``workers`` processes (the CLI calls this before any worker starts)."""
    scheme = urlparse(url).scheme
    if scheme == "memory" and workers > 1:
        raise ValueError(
            f"the memory:// store keeps sessions inside one process; it cannot serve {workers} "
            "worker processes (use sqlite:/// or redis://, or --workers 1)"
        )
    if scheme == "sqlite" and not url.startswith("sqlite:///"):
        raise ValueError(f"sqlite store URL needs a path: sqlite:///file.db, got {url!r}")
    if scheme not in ("memory", "sqlite", "redis", "rediss"):
        raise ValueError(f"unknown store URL {url!r}: use {_SCHEMES}")


def store_options(settings: Settings) -> StoreOptions:
    """The options every engine is opened with, from the ``BNAAS_*`` settings."""
    history = HistoryPolicy(
        settings.history_recent,
        settings.history_every,
        settings.history_older,
        settings.history_max_values,
    )
    return StoreOptions(
        idempotency_ttl_s=settings.idempotency_ttl_s,
        history=history,
        timeout_s=settings.store_timeout_s,
        pool_size=settings.store_pool_size,
        workers=settings.workers,
    )


def open_store(url: str, options: StoreOptions | None = None, xp: ModuleType = np) -> Store:
    """``memory://`` or ``sqlite:///relative/path`` / ``sqlite:////absolute/path``."""
    options = options or StoreOptions()
    check_url(url, options.workers)
    if url.startswith("memory:"):
        return MemoryStore(options)
    if urlparse(url).scheme in ("redis", "rediss"):
        try:
            from service.stores.redis import RedisStore  # redis-py is an optional extra
        except ImportError as exc:
            raise ValueError(
                f"{url.split(':')[0]}:// needs redis-py: pip install 'bnaas[redis]' ({exc})"
            ) from None

        return RedisStore(url, options, xp)
    path = url[len("sqlite:///") :]
    if not path:
        raise ValueError(f"sqlite store URL needs a path: sqlite:///file.db, got {url!r}")
    return SQLiteStore(Path(path), options, xp)
