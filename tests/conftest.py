"""Shared fixtures and hypothesis profiles; the backend list lives here (scipy's habit)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "soak", max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# A real redis-server for the Redis store's tests (conformance suite, e2e).
from tests.redis_server import redis_server, redis_url  # noqa: E402, F401
