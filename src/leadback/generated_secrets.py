"""Secrets generated once for the embedded mode and kept in ``<data_dir>/secrets/``.

Used where a setting is required in production but the embedded mode should just work (the
contact encryption key, the admin token). Processes starting at once (ingest workers, the CLI)
must all end up with the same value: each writes a whole value to its own temporary file and
hard-links it into place, which fails if another got there first. Files are mode 0600; values
are never logged, only the file's path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from leadback.errors import ConfigError
from leadback.logs import get_logger

log = get_logger(__name__)


def generated_secret(path: Path, make: Callable[[], str], *, setting: str) -> tuple[str, bool]:
    """The value in ``path``, created with ``make()`` if missing; (value, created now).

    ``ConfigError`` names ``setting`` (the variable to set instead) when the file cannot be
    kept or is empty.
    """
    try:
        created = _create(path, make)
        value = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot keep a generated secret in {path} ({exc.strerror}); set {setting}"
        ) from exc
    if not value:
        raise ConfigError(f"the secret file {path} is empty; delete it or set {setting}")
    if mode & 0o077:
        log.warning("a secret file is readable by others", path=str(path))
    return value, created


def _create(path: Path, make: Callable[[], str]) -> bool:
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            os.fchmod(f.fileno(), 0o600)  # in case a stale temporary file had other bits
            f.write(make() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)
