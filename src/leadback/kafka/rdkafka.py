"""The ingest producer on librdkafka (confluent-kafka): records are queued and batched in C.

Why not aiokafka here: on this machine, against the same broker, handing one record to
aiokafka costs about 15 µs of Python (a coroutine, a future, a Python partitioner and batch
builder), and handing it to librdkafka about 1.4 µs including its own threads. A pixel's whole
budget is about 30 µs of CPU, so ingest uses librdkafka, and so does the segmenter's change
publisher; the rare-path producers (the segmenter's invalid records) keep aiokafka's
:class:`leadback.kafka.producer.KafkaRecordProducer`.

Keys are partitioned with ``murmur2_random``, the Java client's (and aiokafka's) hash, so a
visitor's events land in the same partition whichever Leadback producer wrote them.

Successful deliveries are not reported back to Python (``delivery.report.only.error``): a
record that fails (broker away for ``message.timeout.ms``, purged at shutdown) comes back once
through the failure callback, with its topic, key and value, to be spooled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from leadback.errors import BrokerUnavailableError, QueueFullError
from leadback.settings import KafkaSettings

#: ``(topic, key, value, reason)`` of a record the broker did not take.
FailureCallback = Callable[[str, bytes | None, bytes, str], None]


class QueueingProducer(Protocol):
    """A producer that queues records in the client and sends them in the background."""

    def start(self, on_failure: FailureCallback) -> None:
        """Create the client; ``on_failure`` gets every record that could not be delivered."""
        ...

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_failure: FailureCallback | None = None,
    ) -> None:
        """Queue one record (never blocks). Raises :class:`QueueFullError` when the client's
        queue is full; ``on_failure`` replaces the start-up callback for this record."""
        ...

    def poll(self) -> None:
        """Serve pending failure reports (callbacks run in the caller's thread)."""
        ...

    def pending(self) -> int:
        """Records queued or in flight: neither acknowledged nor reported failed yet."""
        ...

    async def probe(self, timeout: float) -> bool:
        """Whether the cluster answers a metadata request within ``timeout`` seconds."""
        ...

    def purge(self) -> None:
        """Give up on every pending record: each is reported failed at the next poll."""
        ...

    def close(self) -> None: ...


def rdkafka_config(
    kafka: KafkaSettings,
    bootstrap: str,
    *,
    embedded: bool,
    queue_max_events: int,
    queue_max_bytes: int,
    stall_s: float,
) -> dict[str, Any]:
    """librdkafka producer properties from the settings (acks=all, batching, compression)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": kafka.client_id,
        "acks": "all",
        "enable.idempotence": kafka.producer_idempotent(embedded_broker=embedded),
        "linger.ms": kafka.linger_ms,
        "batch.size": kafka.max_batch_bytes,
        "compression.type": kafka.compression,
        "partitioner": "murmur2_random",
        "request.timeout.ms": kafka.request_timeout_ms,
        # A record not acknowledged within the stall limit fails and is spooled to disk.
        "message.timeout.ms": max(1000, int(stall_s * 1000)),
        "queue.buffering.max.messages": queue_max_events,
        "queue.buffering.max.kbytes": max(1, queue_max_bytes // 1024),
        "delivery.report.only.error": True,
        "security.protocol": kafka.security_protocol.lower(),
    }
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        )
    return config


class RdKafkaProducer:
    """:class:`QueueingProducer` on confluent-kafka."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._client: Producer | None = None
        self._on_failure: FailureCallback | None = None
        self._log = logging.getLogger("leadback.kafka.rdkafka")

    @property
    def _producer(self) -> Producer:
        if self._client is None:
            raise BrokerUnavailableError("producer used before start()")
        return self._client

    def start(self, on_failure: FailureCallback) -> None:
        self._on_failure = on_failure
        try:
            self._client = Producer(
                {
                    **self._config,
                    "on_delivery": self._report,
                    "error_cb": self._error,
                    "logger": self._log,
                }
            )
        except KafkaException as exc:
            raise BrokerUnavailableError(f"cannot create the Kafka producer: {exc}") from exc

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_failure: FailureCallback | None = None,
    ) -> None:
        client = self._client
        if client is None:
            raise BrokerUnavailableError("producer used before start()")
        try:
            if on_failure is None:
                client.produce(topic, value, key)
            else:
                client.produce(topic, value, key, on_delivery=_reporter(on_failure))
        except BufferError as exc:
            raise QueueFullError("the producer's queue is full") from exc
        except KafkaException as exc:
            raise BrokerUnavailableError(f"produce to {topic} failed: {exc}") from exc

    def poll(self) -> None:
        if self._client is not None:
            self._client.poll(0)

    def pending(self) -> int:
        return len(self._client) if self._client is not None else 0

    async def probe(self, timeout: float) -> bool:
        client = self._producer
        try:
            await asyncio.to_thread(client.list_topics, timeout=timeout)
        except KafkaException:
            return False
        return True

    def purge(self) -> None:
        if self._client is not None:
            self._client.purge(in_queue=True, in_flight=True, blocking=False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _report(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and self._on_failure is not None:
            self._on_failure(msg.topic() or "", msg.key(), msg.value() or b"", err.str())

    def _error(self, err: KafkaError) -> None:
        # Connection-level errors; records are retried until message.timeout.ms anyway.
        self._log.warning("kafka client error: %s", err.str())


def _reporter(on_failure: FailureCallback) -> Callable[[KafkaError | None, Message], None]:
    def report(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            on_failure(msg.topic() or "", msg.key(), msg.value() or b"", err.str())

    return report
