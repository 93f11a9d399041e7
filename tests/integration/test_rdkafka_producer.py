"""The ingest producer (librdkafka) against the real broker: keys land where aiokafka and the
Java client would put them, and records the broker never takes come back to be spooled."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from leadback.broker import EmbeddedBroker
from leadback.kafka.rdkafka import RdKafkaProducer, rdkafka_config
from leadback.kafka.topics import ensure_topics
from leadback.settings import KafkaSettings
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def producer(bootstrap: str, *, stall_s: float = 3.0) -> RdKafkaProducer:
    return RdKafkaProducer(
        rdkafka_config(
            KafkaSettings(bootstrap=bootstrap),
            bootstrap,
            embedded=True,
            queue_max_events=1000,
            queue_max_bytes=1 << 20,
            stall_s=stall_s,
        )
    )


async def drain(p: RdKafkaProducer, timeout: float = 10.0) -> None:
    """Serve the producer's reports until no record is pending."""

    def pending() -> int:
        p.poll()
        return p.pending()

    await wait_for(pending, 0, what="no record pending", timeout=timeout, interval=0.01)


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
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition("rdk-parts", i) for i in range(6)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        where: dict[bytes, int] = {}
        while len(where) < len(keys):
            batch = await consumer.getmany(timeout_ms=3000)
            assert batch, f"only {len(where)} of {len(keys)} records arrived"
            for tp, records in batch.items():
                for r in records:
                    assert r.key is not None
                    where[r.key] = tp.partition
    finally:
        await consumer.stop()
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
