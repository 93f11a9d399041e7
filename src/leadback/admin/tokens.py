"""Admin API bearer tokens: configured, or generated once for the embedded mode.

``LEADBACK_ADMIN_TOKENS`` wins. In the embedded mode with none configured, a token is generated
once into ``<data_dir>/secrets/admin_token`` (mode 0600) and reused by every later start, and by
the CLI on the same machine. Production refuses to start without tokens (see the settings).
The token is never logged: only the file that holds it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from leadback.errors import ConfigError
from leadback.logs import get_logger
from leadback.settings import Settings

log = get_logger(__name__)

TOKEN_FILE = Path("secrets") / "admin_token"


def admin_tokens(settings: Settings) -> list[str]:
    """The tokens the admin API accepts; the first is the one a client sends."""
    configured = [t.get_secret_value() for t in settings.admin.tokens if t.get_secret_value()]
    if configured:
        return configured
    if settings.environment != "embedded":
        raise ConfigError("LEADBACK_ADMIN_TOKENS is required outside the embedded mode")
    path = token_path(settings)
    try:
        created = _create_token_file(path)
        token = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot keep a generated admin token in {path} ({exc.strerror}); "
            "set LEADBACK_ADMIN_TOKENS"
        ) from exc
    if not token:
        raise ConfigError(f"the admin token file {path} is empty; delete it or set one")
    if mode & 0o077:
        log.warning("the admin token file is readable by others", path=str(path))
    if created:
        log.info("generated an admin token", path=str(path))
    return [token]


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def _create_token_file(path: Path) -> bool:
    """Write a new token to ``path`` unless it exists; True if this call wrote it.

    Processes starting at once each write a whole token to their own temporary file and
    hard-link it into place, which fails if another got there first: all read the same token.
    """
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(secrets.token_urlsafe(24) + "\n")  # 24 bytes -> 32 url-safe characters
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)
