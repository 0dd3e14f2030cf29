"""The Prometheus multiprocess directory of one server start: made fresh before any worker
imports ``prometheus_client`` (which fixes its storage at import) and removed at exit.

Kept apart from ``service.metrics`` on purpose: importing this module must not import
``prometheus_client``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ENV", "multiprocess_dir"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "bnaas-metrics-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale(parent: Path) -> None:
    """Directories left by servers that were killed (no exit handler ran)."""
    for path in parent.glob(f"{_PREFIX}*"):
        pid = path.name.removeprefix(_PREFIX).partition("-")[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _clear(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            path.unlink(missing_ok=True)


@contextmanager
def multiprocess_dir(parent: str = "") -> Iterator[Path]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for this process and the workers it starts.

    When the variable is already set (an operator's choice, e.g. a Kubernetes emptyDir), that
    directory is emptied at start and at exit and kept; otherwise a new directory is made under
    ``parent`` (default: the system temp directory) and removed at exit."""
    given = os.environ.get(ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        _clear(directory)  # counters of a previous start would be added to this one's
        try:
            yield directory
        finally:
            _clear(directory)
        return
    base = Path(parent or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    _remove_stale(base)
    directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
    os.environ[ENV] = str(directory)
    try:
        yield directory
    finally:
        del os.environ[ENV]
        shutil.rmtree(directory, ignore_errors=True)
