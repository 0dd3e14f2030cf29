"""The ``bnaas`` console script: ``bnaas serve --host --port --workers --store --device``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import uvicorn

from service.metrics_dir import multiprocess_dir
from service.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnaas", description="Batch Normalization as a Service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    env = os.environ.get
    serve.add_argument("--host", default=env("BNAAS_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(env("BNAAS_PORT", "8000")))
    serve.add_argument("--workers", type=int, default=int(env("BNAAS_WORKERS", "1")))
    serve.add_argument("--store", default=None, help="memory:// or sqlite:///path (BNAAS_STORE)")
    serve.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=None, help="BNAAS_DEVICE"
    )
    serve.add_argument("--log-level", default=env("BNAAS_LOG_LEVEL", "info"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Worker processes build their app from the environment, so flags travel through it.
    if args.store is not None:
        os.environ["BNAAS_STORE"] = args.store
    if args.device is not None:
        os.environ["BNAAS_DEVICE"] = args.device
    # Before any app import: the workers' metrics go to one fresh shared directory.
    with multiprocess_dir(Settings().metrics_dir):
        uvicorn.run(
            "service.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            timeout_graceful_shutdown=10,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
