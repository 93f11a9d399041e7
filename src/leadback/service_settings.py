"""The settings sections of the stream services: segmenter, audiences, admin API, dispatcher.

Part of the one :class:`~leadback.settings.Settings` class (``LEADBACK_SEGMENTER_*``,
``LEADBACK_AUDIENCES_*``, ``LEADBACK_ADMIN_*``, ``LEADBACK_DISPATCHER_*``); kept apart so each
module holds one job. Import them from :mod:`leadback.settings`.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode


def split_secret_list(v: Any) -> Any:
    """``"a,b"`` / ``"a b"`` / ``'["a","b"]'`` -> a list (for list-of-secret settings).

    Never raises: pydantic would echo the raw (secret) input in its error.
    """
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("["):
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                return [text]
        return [k for k in text.replace(",", " ").split() if k]
    return v


class SegmenterSettings(BaseModel):
    """The segmenter consumer group."""

    group_id: str = "leadback-segmenter"
    batch_max_events: int = Field(100_000, ge=1)
    batch_max_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    buffer_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="all partitions' batches together: past this, the largest is flushed",
    )
    flush_interval_ms: int = Field(250, ge=10, le=60_000)
    fetch_max_records: int = Field(20_000, ge=1)
    catchup_commit_s: float = Field(
        30.0,
        gt=0,
        description="while there is a backlog, inserted batches wait for one audience "
        "evaluation and commit at most this long",
    )
    catchup_commit_events: int = Field(
        1_000_000, ge=1, description="... or until this many events are inserted"
    )
    insert_settings: dict[str, str | int] = Field(
        default_factory=lambda: dict[str, str | int](optimize_on_insert=0),
        description="ClickHouse settings of the events insert (JSON). optimize_on_insert=0: "
        "the ReplacingMergeTree does not collapse duplicates inside each block at insert time "
        "(a quarter of the insert's cost); reads count distinct event_ids or use FINAL anyway",
    )
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    drain_on_shutdown: bool = Field(
        False, description="on SIGTERM, consume to the end of the topic first (embedded mode)"
    )
    shutdown_timeout_s: float = Field(30.0, gt=0)
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0 = off")
    metrics_host: str = "127.0.0.1"


class AudienceSettings(BaseModel):
    """Audience evaluation in the segmenter."""

    enabled: bool = Field(True, description="evaluate audiences after each batch and on a timer")
    timer_interval_ms: int = Field(
        1000, ge=50, le=60_000, description="timer pass: due persons, rule changes"
    )


class AdminSettings(BaseModel):
    """The admin API (audiences, members, erasure), served next to the ClickHouse owner."""

    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535, description="0 = not served")
    tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="bearer tokens, comma-separated or a JSON list. Empty in embedded mode: a "
        "generated token in <data_dir>/secrets/admin_token. Required in production",
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, v: Any) -> Any:
        return split_secret_list(v)


class DispatcherSettings(BaseModel):
    """The dispatcher: campaigns from audience changes to channels (the stream loop's knobs too)."""

    enabled: bool = Field(
        True, description="embedded: run the dispatcher in the process that owns chDB"
    )
    group_id: str = "leadback-dispatcher"
    batch_max_events: int = Field(5_000, ge=1)
    batch_max_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    buffer_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    flush_interval_ms: int = Field(100, ge=10, le=60_000)
    fetch_max_records: int = Field(5_000, ge=1)
    catchup_commit_s: float = Field(2.0, ge=0)
    catchup_commit_events: int = Field(50_000, ge=1)
    retry_initial_s: float = Field(0.2, gt=0, description="store retries of the loop")
    retry_max_s: float = Field(30.0, gt=0)
    drain_on_shutdown: bool = False
    shutdown_timeout_s: float = Field(30.0, gt=0)
    timer_interval_ms: int = Field(
        1000, ge=20, le=60_000, description="how often due steps are looked for"
    )
    max_attempts: int = Field(
        12, ge=1, le=100, description="tries of one message before it goes to the dead topic"
    )
    backoff_initial_s: float = Field(5.0, gt=0, description="first retry delay (then x2, jitter)")
    backoff_max_s: float = Field(6 * 3600.0, gt=0, description="longest retry delay")
    send_timeout_s: float = Field(30.0, gt=0, le=300, description="one provider call")
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="ingest's public base URL, for unsubscribe and Telegram link endpoints",
    )
    token_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="keys (>= 32 bytes) signing unsubscribe and Telegram link tokens; the first "
        "signs, all verify. Empty in embedded mode: a generated key in "
        "<data_dir>/secrets/token_key. Required in production",
    )
    allow_private_targets: bool = Field(
        False,
        description="let webhooks reach loopback, private, link-local and metadata addresses",
    )
    default_timezone: str = Field("UTC", description="quiet hours when nothing else says")
    metrics_port: int = Field(9465, ge=0, le=65535, description="Prometheus /metrics; 0 = off")
    metrics_host: str = "127.0.0.1"

    @field_validator("token_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        return split_secret_list(v)

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{v!r} is not a known time zone") from exc
        return v
