"""aiokafka client options from settings, and where the embedded broker is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from leadback.errors import ConfigError
from leadback.settings import KafkaSettings, Settings

RUN_FILE = "broker.json"


def write_run_file(run_dir: Path, bootstrap: str, pid: int) -> Path:
    """Record the embedded broker's address so other commands (``events tail``) find it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"bootstrap": bootstrap, "pid": pid}))
    tmp.replace(path)
    return path


def resolve_bootstrap(settings: Settings) -> tuple[str, bool]:
    """The bootstrap address, and whether it is the embedded broker.

    ``embedded`` means the broker a running ``leadback up`` started; its address is read from
    the run file in the data directory.
    """
    if not settings.kafka.is_embedded:
        return settings.kafka.bootstrap, False
    path = settings.run_dir / RUN_FILE
    try:
        info = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            "LEADBACK_KAFKA_BOOTSTRAP is 'embedded' but no embedded broker is running "
            f"({path} not readable): start `leadback up`, or set LEADBACK_KAFKA_BOOTSTRAP"
        ) from exc
    return str(info["bootstrap"]), True


def common_options(kafka: KafkaSettings, bootstrap: str) -> dict[str, Any]:
    """Options shared by producers, consumers and the admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": kafka.client_id,
        "request_timeout_ms": kafka.request_timeout_ms,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        opts["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return opts


def producer_options(kafka: KafkaSettings, bootstrap: str, *, embedded: bool) -> dict[str, Any]:
    """aiokafka producer options: acks=all, batching, compression, idempotence if supported."""
    opts = common_options(kafka, bootstrap)
    opts.update(
        acks="all",
        enable_idempotence=kafka.producer_idempotent(embedded_broker=embedded),
        linger_ms=kafka.linger_ms,
        max_batch_size=kafka.max_batch_bytes,
        compression_type=None if kafka.compression == "none" else kafka.compression,
    )
    return opts
