"""All Leadback settings: one pydantic-settings class, ``LEADBACK_*`` environment variables.

Nested sections map to ``LEADBACK_<SECTION>_<FIELD>``, e.g. ``LEADBACK_KAFKA_BOOTSTRAP`` or
``LEADBACK_CLICKHOUSE_URL``. Secrets are ``SecretStr`` and can come from files, for Docker and
Kubernetes secrets: ``LEADBACK_<NAME>_FILE=/path`` reads ``LEADBACK_<NAME>`` from that file, and
every file in ``$LEADBACK_SECRETS_DIR`` named like a variable (``leadback_clickhouse_password``)
is read as that variable. A variable set directly wins over a file.
The defaults give the embedded mode (``leadback up``): embedded broker, chDB in ``.leadback/``.
``environment=production`` refuses the embedded-only conveniences at start-up.
Errors never echo the values read (they may be secrets): only where and what is wrong.
"""

from __future__ import annotations

import binascii
import ipaddress
import os
from base64 import urlsafe_b64decode
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from leadback.errors import ConfigError
from leadback.service_settings import (
    AdminSettings,
    AudienceSettings,
    DispatcherSettings,
    SegmenterSettings,
    split_secret_list,
)

EMBEDDED = "embedded"
DEMO_SITE = "demo"
DEMO_WRITE_KEY = "demo-write-key"

ConsentDefault = Literal["granted", "denied"]
Compression = Literal["none", "gzip", "lz4", "zstd"]


class KafkaSettings(BaseModel):
    """The Kafka cluster (or the embedded broker) and the topics."""

    bootstrap: str = Field(
        EMBEDDED,
        description="host:port list, or 'embedded' for the broker started by `leadback up`",
    )
    client_id: str = "leadback"
    idempotent: bool | None = Field(
        None,
        description="idempotent producer; default on for a real cluster, off for embedded "
        "(the embedded tansu broker rejects aiokafka's InitProducerId)",
    )
    linger_ms: int = Field(5, ge=0, le=1000)
    max_batch_bytes: int = Field(1_048_576, ge=16_384, le=16_777_216)
    compression: Compression = "lz4"
    request_timeout_ms: int = Field(15_000, ge=1000, le=300_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topic_events: str = "leadback.events.v1"
    topic_invalid: str = "leadback.events.invalid.v1"
    topic_changes: str = "leadback.audiences.changes.v1"
    topic_dead: str = "leadback.dispatch.dead.v1"
    partitions: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="partitions for topics Leadback creates; default 6, or 1 on the embedded "
        "broker (it serves one segmenter, and each partition costs an insert per round)",
    )
    embedded_port: int = Field(0, ge=0, le=65535, description="embedded broker port; 0 = any free")
    session_timeout_ms: int | None = Field(
        None,
        ge=1000,
        le=300_000,
        description="consumer-group session timeout: how long a member that died (SIGKILL, a "
        "lost host) keeps its partitions before the group hands them on. Default 6000 (the "
        "least Apache Kafka accepts by default), 3000 on the embedded broker",
    )

    @property
    def is_embedded(self) -> bool:
        return self.bootstrap == EMBEDDED

    @property
    def topic_partitions(self) -> int:
        """Partitions of the events and change topics Leadback creates."""
        if self.partitions is not None:
            return self.partitions
        return 1 if self.is_embedded else 6

    def consumer_session_timeout_ms(self, *, embedded_broker: bool) -> int:
        if self.session_timeout_ms is not None:
            return self.session_timeout_ms
        return 3000 if embedded_broker else 6000

    def producer_idempotent(self, *, embedded_broker: bool) -> bool:
        if self.idempotent is not None:
            return self.idempotent
        return not embedded_broker


class ClickHouseSettings(BaseModel):
    """ClickHouse: ``chdb://<dir>`` in process, or ``http(s)://host:port`` for a server."""

    url: str = "chdb://.leadback/chdb"
    database: str = Field("leadback", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    username: str = "default"
    password: SecretStr = SecretStr("")
    connect_timeout_s: float = Field(10.0, gt=0)
    query_timeout_s: float = Field(120.0, gt=0)
    events_ttl_days: int = Field(395, ge=1, le=36_500)
    dedup_window_blocks: int = Field(10_000, ge=100, le=1_000_000)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("chdb://", "http://", "https://")):
            raise ValueError("must start with chdb://, http:// or https://")
        return v

    @property
    def is_chdb(self) -> bool:
        return self.url.startswith("chdb://")


class SiteSettings(BaseModel):
    """One website sending events."""

    write_key: SecretStr = Field(description="key for POST /v1/events and the Segment protocol")
    consent_default: ConsentDefault | None = Field(
        None, description="overrides ingest.consent_default for this site"
    )


class IngestSettings(BaseModel):
    """The HTTP ingest service."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    cookie_name: str = Field("lb_vid", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    cookie_domain: str | None = None
    cookie_max_age_days: int = Field(365, ge=1, le=400)
    consent_default: ConsentDefault = Field(
        "granted", description="consent assumed when a pixel carries no consent parameter"
    )
    honor_dnt: bool = Field(True, description="treat `DNT: 1` like `Sec-GPC: 1`")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is believed"
    )
    max_query_bytes: int = Field(8192, ge=512, le=65_536)
    max_event_bytes: int = Field(32_768, ge=1024, le=1_048_576)
    max_batch_bytes: int = Field(512_000, ge=1024, le=16_777_216)
    max_batch_events: int = Field(1000, ge=1, le=100_000)
    queue_max_events: int = Field(200_000, ge=100)
    queue_max_bytes: int = Field(128 * 1024 * 1024, ge=1024 * 1024)
    spool_dir: Path | None = Field(None, description="default: <data_dir>/spool")
    spool_max_bytes: int = Field(2 * 1024**3, ge=1024 * 1024)
    spool_segment_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    broker_stall_s: float = Field(
        3.0, gt=0, description="unacknowledged sends older than this mark the broker away"
    )
    shutdown_timeout_s: float = Field(15.0, gt=0)
    event_time_max_lag_s: float = Field(
        7 * 86400.0,
        ge=0,
        le=366 * 86400.0,
        description="an event's time (occurred_at) is the client's, corrected for its clock "
        "skew, but never further back than this before ingest received it (7 days); imports "
        "(`leadback events import`) are not limited",
    )

    @property
    def event_time_max_lag_ms(self) -> int:
        return int(self.event_time_max_lag_s * 1000)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            ipaddress.ip_network(cidr, strict=False)
        return v


class IdentitySettings(BaseModel):
    """Contact details in traits: the keys that encrypt them, the region for local phones."""

    contact_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Fernet keys (32 url-safe base64 bytes), comma-separated or a JSON list; "
        "the first encrypts, all decrypt. Empty in embedded mode: a generated key in "
        "<data_dir>/secrets/contact_key. Required in production",
    )
    default_phone_region: str | None = Field(
        None,
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166 alpha-2 region for phone numbers written without +country code",
    )

    @field_validator("contact_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        return split_secret_list(v)

    @field_validator("contact_keys")
    @classmethod
    def _fernet_keys(cls, v: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(v, 1):
            try:
                ok = len(urlsafe_b64decode(key.get_secret_value().encode())) == 32
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"key {i} is not a Fernet key (32 url-safe base64 bytes)")
        return v

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, v: str | None) -> str | None:
        import phonenumbers  # only here: settings load fast when the region is unset

        if v is not None and v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not a region phone numbers are known for")
        return v


class Settings(BaseSettings):
    """Every setting of every service. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="LEADBACK_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    environment: Literal["embedded", "production"] = "embedded"
    data_dir: Path = Path(".leadback")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    ingest: IngestSettings = IngestSettings()
    segmenter: SegmenterSettings = SegmenterSettings()
    identity: IdentitySettings = IdentitySettings()
    audiences: AudienceSettings = AudienceSettings()
    admin: AdminSettings = AdminSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    sites: dict[str, SiteSettings] = Field(
        default_factory=lambda: {DEMO_SITE: SiteSettings(write_key=SecretStr(DEMO_WRITE_KEY))}
    )
    site_registry: Path | None = Field(
        None, description="YAML/JSON file {site_id: {write_key: ...}}; replaces `sites`"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvAndSecretFiles(settings_cls))

    @model_validator(mode="after")
    def _load_registry_and_check(self) -> Settings:
        if self.site_registry is not None:
            self.sites = _read_site_registry(self.site_registry)
        for site_id in self.sites:
            if not site_id or len(site_id) > 64:
                raise ValueError(f"site id {site_id!r} must be 1..64 characters")
        if self.environment == "production":
            if self.kafka.is_embedded:
                raise ValueError("production needs LEADBACK_KAFKA_BOOTSTRAP (not 'embedded')")
            for site_id, site in self.sites.items():
                if site.write_key.get_secret_value() == DEMO_WRITE_KEY:
                    raise ValueError(f"site {site_id!r} uses the demo write key in production")
                if len(site.write_key.get_secret_value()) < 16:
                    raise ValueError(f"site {site_id!r}: write keys need 16+ characters")
            if any(len(t.get_secret_value()) < 24 for t in self.admin.tokens) or (
                self.admin.port and not self.admin.tokens
            ):
                raise ValueError("production needs LEADBACK_ADMIN_TOKENS of 24+ characters each")
            if not self.identity.contact_keys:
                raise ValueError("production needs LEADBACK_IDENTITY_CONTACT_KEYS")
            if not self.dispatcher.token_keys or any(
                len(k.get_secret_value()) < 32 for k in self.dispatcher.token_keys
            ):
                raise ValueError("production needs LEADBACK_DISPATCHER_TOKEN_KEYS of 32+ bytes")
        return self

    @property
    def spool_dir(self) -> Path:
        return self.ingest.spool_dir or self.data_dir / "spool"

    @property
    def run_dir(self) -> Path:
        """Where `leadback up` writes the embedded broker's address for other commands."""
        return self.data_dir / "run"


class _EnvAndSecretFiles(EnvSettingsSource):
    """Environment variables, plus variables whose values live in files (see module doc)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = dict(super()._load_env_vars())  # keys are lower-cased
        from_files: dict[str, str] = {}
        secrets_dir = os.environ.get("LEADBACK_SECRETS_DIR")
        if secrets_dir and Path(secrets_dir).is_dir():
            for path in Path(secrets_dir).iterdir():
                if path.name.lower().startswith("leadback_") and path.is_file():
                    from_files[path.name.lower()] = path.read_text().strip()
        for name, value in list(env.items()):
            if name.endswith("_file") and name.startswith("leadback_") and value:
                target = name.removesuffix("_file")
                if target != "leadback_site_registry":
                    from_files[target] = Path(value).read_text().strip()
        return {**from_files, **{k: v for k, v in env.items() if v is not None}}


def _read_site_registry(path: Path) -> dict[str, SiteSettings]:
    try:
        raw: Any = (
            orjson.loads(path.read_bytes())
            if path.suffix == ".json"
            else yaml.safe_load(path.read_text())
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read site registry {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"site registry {path} must map site ids to settings")
    return {str(k): SiteSettings.model_validate(v) for k, v in raw.items()}


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    where = ".".join(str(part) for part in loc)
    return f"{where}: {msg}" if where else msg


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (and secret files); raise ``ConfigError`` if bad."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # Not ``str(exc)`` and not chained: pydantic's text echoes the input, secrets included.
        problems = "; ".join(
            _problem(e["loc"], e["msg"]) for e in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
