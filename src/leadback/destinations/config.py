"""What every destination definition shares, and how its credentials are referenced.

A destination is data (``leadback campaigns apply``, the admin API), stored in ClickHouse, so
it must never hold a credential: a secret field is a reference, ``{"env": "SMTP_PASSWORD"}``
or ``{"file": "/run/secrets/smtp_password"}``, resolved when the dispatcher builds the
channel. A plain string where a reference belongs is refused at validation, so a password
pasted into a YAML file never reaches the store, the API or a log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from leadback.clock import Clock
from leadback.errors import ConfigError

DestinationId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]


class SecretRef(BaseModel):
    """Where a credential lives: an environment variable or a file (exactly one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    file: str | None = Field(None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret is {env: NAME} or {file: /path}, exactly one")
        return self

    def resolve(self) -> str:
        """The secret's value; ``ConfigError`` (naming the reference, never a value) if absent."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            value = Path(self.file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.file}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"secret file {self.file} is empty")
        return value


class DestinationConfig(BaseModel):
    """Fields every destination has; each channel module subclasses it with ``kind`` and its
    own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: DestinationId
    concurrency: int = Field(4, ge=1, le=256, description="provider calls in flight at once")
    rate_per_s: float | None = Field(
        None, gt=0, description="at most this many calls per second (None: the channel's own)"
    )
    timeout_s: float = Field(15.0, gt=0, le=120, description="one provider call")


@dataclass(frozen=True)
class ChannelDeps:
    """What a channel is built with besides its config: the clock, an HTTP transport tests can
    replace, and the deployment's rules."""

    clock: Clock
    transport: httpx.AsyncBaseTransport | None = None  # None: a real network transport
    allow_private_targets: bool = False  # webhooks to loopback/private addresses (tests, dev)
    public_url: str = "http://127.0.0.1:8000"  # ingest, for links in messages

    def http_client(self, timeout_s: float, **kwargs: object) -> httpx.AsyncClient:
        """An HTTP client with a timeout on every phase, no redirects followed."""
        return httpx.AsyncClient(
            transport=self.transport,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            **kwargs,  # type: ignore[arg-type]
        )
