"""The ``bnaas`` console script: ``bnaas serve`` with flags that override ``BNAAS_*`` settings."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from pydantic import ValidationError

from service import server
from service.metrics_dir import multiprocess_dir
from service.settings import Settings
from service.stores import check_url

# Flags that stand for a setting of the same name (``--log-level`` is ``BNAAS_LOG_LEVEL``).
_SETTING_FLAGS = ("host", "port", "workers", "store", "device", "log_level", "access_log")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnaas", description="Batch Normalization as a Service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the HTTP service. Every flag overrides its BNAAS_* variable; the "
        "limits and timeouts are BNAAS_* variables only (see the README).",
    )
    serve.add_argument("--host", help="BNAAS_HOST (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="BNAAS_PORT (default 8000)")
    serve.add_argument("--workers", type=int, help="BNAAS_WORKERS (default 1)")
    serve.add_argument("--store", help="memory:// or sqlite:///path (BNAAS_STORE)")
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"), help="BNAAS_DEVICE")
    serve.add_argument("--log-level", type=str.lower, help="BNAAS_LOG_LEVEL (default info)")
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one log line per request (BNAAS_ACCESS_LOG, default off)",
    )
    serve.add_argument(
        "--app",
        default="service.app:app_from_env",
        help=argparse.SUPPRESS,  # another app factory, for bench/ (bench.echo_app:app)
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Worker processes build their app (and its Settings) from the environment, so the flags
    # travel through it: the server and the app read one and the same configuration.
    for name in _SETTING_FLAGS:
        value = getattr(args, name)
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            os.environ[f"BNAAS_{name.upper()}"] = text
    try:
        settings = Settings()
        check_url(settings.store, settings.workers)  # memory:// refuses several workers
    except (ValidationError, ValueError) as exc:
        parser.error(str(exc))  # before any worker starts (uvicorn would restart them forever)
    # Before any app import: the workers' metrics go to one fresh shared directory.
    with multiprocess_dir(settings.metrics_dir):
        server.run(settings, app=args.app)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
