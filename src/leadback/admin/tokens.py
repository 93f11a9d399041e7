"""Admin API bearer tokens: configured, or generated once for the embedded mode.

``LEADBACK_ADMIN_TOKENS`` wins. In the embedded mode with none configured, a token is generated
once into ``<data_dir>/secrets/admin_token`` (mode 0600) and reused by every later start, and by
the CLI on the same machine. Production refuses to start without tokens (see the settings).
The token is never logged: only the file that holds it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from leadback.errors import ConfigError
from leadback.generated_secrets import generated_secret
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
    token, created = generated_secret(
        path, lambda: secrets.token_urlsafe(24), setting="LEADBACK_ADMIN_TOKENS"
    )
    if created:
        log.info("generated an admin token", path=str(path))
    return [token]


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE
