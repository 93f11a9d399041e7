"""The one place ``LEADBACK_KAFKA_*`` settings become Kafka client configuration.

Two clients, chosen by what a record costs. Handing one record to the producer costs about
1.4 µs of CPU with librdkafka and about 15 µs with aiokafka (same machine, same broker), and a
pixel's whole budget is about 30 µs:

* librdkafka (``confluent-kafka``) where the cost per record matters: the ingest producer
  (:mod:`.rdkafka` behind :mod:`.delivery`), the segmenter's consumer (:mod:`.consumer`:
  fetch, decompression and parsing in C threads) and the change publisher.
* aiokafka (asyncio-native, simpler) where records are rare: the invalid and dead topics
  (:mod:`.producer`), ``events tail`` (:mod:`.tail`), topic creation (:mod:`.topics`), tools
  and tests.

The connection and security options are written once, in aiokafka's keyword names
(:func:`common_options`), and renamed for librdkafka by one table; each client's producer and
consumer properties are built here too, so no setting has two translations.

Idempotence (``LEADBACK_KAFKA_IDEMPOTENT``) is on by default for a real cluster and off for
the ``embedded`` broker. The bundled tansu broker answers librdkafka's InitProducerId (v4) but
refuses aiokafka's (v0); a producer whose InitProducerId is refused raises
:func:`idempotence_refused`, which says what to set.

Also here: where the embedded broker is (:func:`resolve_bootstrap`, the run file).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from leadback.errors import ConfigError
from leadback.settings import KafkaSettings, Settings

RUN_FILE = "broker.json"

# aiokafka keyword (as in common_options) -> librdkafka property. request_timeout_ms is not
# here: librdkafka's producer and consumer each take it under another name.
_RDKAFKA_NAMES = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
}


def write_run_file(run_dir: Path, bootstrap: str, pid: int) -> None:
    """Record the embedded broker's address so other commands (``events tail``) find it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"bootstrap": bootstrap, "pid": pid}))
    tmp.replace(path)


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


def idempotence_refused(bootstrap: str, error: str) -> ConfigError:
    """The error a producer raises when the broker refuses the idempotent producer."""
    return ConfigError(
        f"the Kafka broker at {bootstrap} does not accept idempotent producers (its answer to "
        f"InitProducerId: {error}): set LEADBACK_KAFKA_IDEMPOTENT=false for this broker "
        "(events carry an event_id and are counted once downstream either way)"
    )


# -- aiokafka ------------------------------------------------------------------------------


def common_options(kafka: KafkaSettings, bootstrap: str) -> dict[str, Any]:
    """aiokafka options shared by producers, consumers and the admin client (connection,
    security); also what :class:`~leadback.kafka.consumer.GroupConsumer` takes."""
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


# -- librdkafka ----------------------------------------------------------------------------


def _rdkafka_connection(options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`common_options` in librdkafka's property names (unset options left out)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or name == "request_timeout_ms":
            continue
        if name not in _RDKAFKA_NAMES:
            raise ConfigError(f"Kafka option {name!r} has no librdkafka equivalent")
        out[_RDKAFKA_NAMES[name]] = value.lower() if name == "security_protocol" else value
    return out


def rdkafka_config(
    kafka: KafkaSettings,
    bootstrap: str,
    *,
    embedded: bool,
    queue_max_events: int,
    queue_max_bytes: int,
    stall_s: float,
) -> dict[str, Any]:
    """librdkafka producer properties (acks=all, batching, compression, Java-compatible keys).

    ``stall_s``: a record not acknowledged this long fails and comes back to be spooled.
    """
    return {
        **_rdkafka_connection(common_options(kafka, bootstrap)),
        "acks": "all",
        "enable.idempotence": kafka.producer_idempotent(embedded_broker=embedded),
        "linger.ms": kafka.linger_ms,
        "batch.size": kafka.max_batch_bytes,
        "compression.type": kafka.compression,
        # The Java client's (and aiokafka's) hash: a visitor's events land in the same
        # partition whichever Leadback producer wrote them.
        "partitioner": "murmur2_random",
        "request.timeout.ms": kafka.request_timeout_ms,
        "message.timeout.ms": max(1000, int(stall_s * 1000)),
        "queue.buffering.max.messages": queue_max_events,
        "queue.buffering.max.kbytes": max(1, queue_max_bytes // 1024),
        # Only failures come back to Python (to be spooled); successes cost nothing there.
        "delivery.report.only.error": True,
    }


def rdkafka_consumer_config(
    options: Mapping[str, Any],
    *,
    group_id: str,
    max_partition_fetch_bytes: int,
    fetch_max_wait_ms: int,
    session_timeout_ms: int,
) -> dict[str, Any]:
    """librdkafka consumer properties for a group member that commits by hand.

    ``options``: :func:`common_options` (the consumer takes them as keyword arguments).
    """
    config: dict[str, Any] = {
        **_rdkafka_connection(options),
        "group.id": group_id,
        # Offsets are committed by the loop after its handler succeeded, never by the client.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "max.partition.fetch.bytes": max_partition_fetch_bytes,
        "fetch.max.bytes": max(max_partition_fetch_bytes, 64 * 1024 * 1024),
        # Short: the broker may hold an empty fetch this long, which is added to freshness.
        "fetch.wait.max.ms": fetch_max_wait_ms,
        # The prefetch queue is bounded by bytes (64 MiB); when it is full, fetch again soon
        # after the loop takes records (librdkafka's default waits a whole second).
        "fetch.queue.backoff.ms": 20,
        # A member that died keeps its partitions this long; heartbeats (from librdkafka's own
        # thread, so a long round does not miss them) three times per timeout.
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
        "log.connection.close": False,
    }
    if options.get("request_timeout_ms") is not None:
        config["socket.timeout.ms"] = options["request_timeout_ms"]
    return config
