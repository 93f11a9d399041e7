"""The ingest producer (librdkafka) against the real broker: keys land where aiokafka and the
Java client would put them, records the broker never takes come back to be spooled, and a
broker without idempotent producers is named with the setting to change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from leadback.broker import EmbeddedBroker
from leadback.errors import BrokerUnavailableError, ConfigError
from leadback.kafka.config import rdkafka_config
from leadback.kafka.rdkafka import RdKafkaProducer
from leadback.kafka.topics import ensure_topics
from leadback.settings import KafkaSettings
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def config(bootstrap: str, *, stall_s: float = 3.0, idempotent: bool = False) -> dict[str, Any]:
    return rdkafka_config(
        KafkaSettings(bootstrap=bootstrap, idempotent=idempotent),
        bootstrap,
        embedded=False,
        queue_max_events=1000,
        queue_max_bytes=1 << 20,
        stall_s=stall_s,
    )


def producer(bootstrap: str, *, stall_s: float = 3.0) -> RdKafkaProducer:
    return RdKafkaProducer(config(bootstrap, stall_s=stall_s))


async def drain(p: RdKafkaProducer, timeout: float = 10.0) -> None:
    """Serve the producer's reports until no record is pending."""

    def pending() -> int:
        p.poll()
        return p.pending()

    await wait_for(pending, 0, what="no record pending", timeout=timeout, interval=0.01)


async def read_back(bootstrap: str, topic: str, partitions: int, count: int) -> dict[bytes, int]:
    """The partition of each of the first ``count`` records of ``topic``, by key."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, i) for i in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        where: dict[bytes, int] = {}
        while len(where) < count:
            batch = await consumer.getmany(timeout_ms=3000)
            assert batch, f"only {len(where)} of {count} records arrived"
            for tp, records in batch.items():
                for r in records:
                    assert r.key is not None
                    where[r.key] = tp.partition
    finally:
        await consumer.stop()
    return where


async def test_keys_are_partitioned_like_the_java_client(broker: EmbeddedBroker) -> None:
    await ensure_topics(broker.bootstrap, {"rdk-parts": 6})
    failures: list[str] = []
    p = producer(broker.bootstrap)
    p.start(lambda _t, _k, _v, reason: failures.append(reason))
    keys = [f"demo:{i:032x}".encode() for i in range(60)]
    for key in keys:
        p.produce("rdk-parts", key, b"{}")
    await drain(p)
    p.close()
    assert failures == []
    where = await read_back(broker.bootstrap, "rdk-parts", 6, len(keys))
    assert where == {k: (murmur2(k) & 0x7FFFFFFF) % 6 for k in keys}
    assert len(set(where.values())) > 1


async def test_records_the_broker_never_takes_come_back_as_failures() -> None:
    with EmbeddedBroker() as away:
        await ensure_topics(away.bootstrap, {"rdk-away": 1})
        away.pause()  # SIGSTOP: connections hang, nothing is acknowledged
        try:
            failed: list[bytes] = []
            p = producer(away.bootstrap, stall_s=1.0)
            p.start(lambda _t, _k, value, _r: failed.append(value))
            for i in range(5):
                p.produce("rdk-away", b"k", b"%d" % i)
            await drain(p, timeout=15)
            p.close()
        finally:
            away.resume()
    assert sorted(failed) == [b"%d" % i for i in range(5)]


async def test_the_idempotent_producer_delivers_to_the_bundled_broker(
    broker: EmbeddedBroker,
) -> None:
    """tansu refuses aiokafka's InitProducerId (v0) but answers librdkafka's (v4): ingest
    against a plain tansu broker, idempotence at its default (on), delivers."""
    await ensure_topics(broker.bootstrap, {"rdk-idem": 2})
    failures: list[str] = []
    p = RdKafkaProducer(config(broker.bootstrap, idempotent=True))
    p.start(lambda _t, _k, _v, reason: failures.append(reason))
    keys = [b"demo:%d" % i for i in range(10)]
    for key in keys:
        p.produce("rdk-idem", key, b"{}")
    await drain(p)
    assert await p.probe(5)
    p.close()
    assert failures == []
    assert set(await read_back(broker.bootstrap, "rdk-idem", 2, len(keys))) == set(keys)


async def test_a_broker_without_idempotent_producers_names_the_setting(
    broker: EmbeddedBroker,
) -> None:
    # librdkafka is told the broker predates InitProducerId (Kafka 0.9's features): what it
    # then does is what it does against any broker without idempotent producers.
    old_broker = {"api.version.request": False, "broker.version.fallback": "0.9.0"}
    failed: list[bytes] = []
    p = RdKafkaProducer({**config(broker.bootstrap, idempotent=True), **old_broker})
    p.start(lambda _t, _k, value, _r: failed.append(value))
    p.produce("rdk-old", b"k", b"queued before the refusal")
    with pytest.raises(ConfigError, match="LEADBACK_KAFKA_IDEMPOTENT=false") as refused:
        for _ in range(100):  # the refusal arrives once the client has connected
            await p.probe(5)
            await asyncio.sleep(0.05)
    assert "does not accept idempotent producers" in str(refused.value)
    with pytest.raises(BrokerUnavailableError, match="LEADBACK_KAFKA_IDEMPOTENT=false"):
        p.produce("rdk-old", b"k", b"after")
    await drain(p)
    p.close()
    assert failed == [b"queued before the refusal"]  # given back, to be spooled
