"""The audience change publisher on librdkafka, against the real broker."""

from __future__ import annotations

import time

import orjson
import pytest

from leadback.audiences.changes import ChangeRecord, change_record
from leadback.audiences.publisher import QueuedChangePublisher
from leadback.broker import EmbeddedBroker
from leadback.errors import BrokerUnavailableError
from leadback.kafka.config import rdkafka_config
from leadback.kafka.rdkafka import RdKafkaProducer
from leadback.segmenter.service import change_producer
from leadback.settings import Settings
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration


def changes(n: int, first: int = 0) -> list[ChangeRecord]:
    now = int(time.time() * 1000)
    return [
        change_record(
            {
                "site_id": "demo",
                "audience_id": "a1",
                "person_id": f"p{i}",
                "change": "enter",
                "reason": "qualifies",
                "version": 1,
                "audience_version": 1,
                "products": [],
                "at": now,
                "entered_at": now,
            }
        )
        for i in range(first, first + n)
    ]


async def test_a_publish_returns_when_every_change_is_on_the_topic(topics: Settings) -> None:
    producer = change_producer(topics, topics.kafka.bootstrap, embedded=True)
    try:
        publisher = QueuedChangePublisher(producer, topics.kafka.topic_changes)
        records = changes(5000)
        await publisher.publish(records)
        assert producer.pending() == 0
        await publisher.publish([])
    finally:
        producer.close()
    on_topic = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_changes)
    assert sorted(r["change_id"] for r in on_topic) == sorted(str(r["change_id"]) for r in records)
    first = on_topic[0]
    assert first == orjson.loads(orjson.dumps(records[int(first["visitor_id"][1:])]))


async def test_changes_not_acknowledged_in_time_raise_and_leave_nothing_queued(
    topics: Settings, broker: EmbeddedBroker
) -> None:
    producer = change_producer(topics, topics.kafka.bootstrap, embedded=True)
    publisher = QueuedChangePublisher(producer, topics.kafka.topic_changes, timeout_s=1.5)
    try:
        await publisher.publish(changes(1))  # connected
        broker.pause()
        try:
            with pytest.raises(BrokerUnavailableError):
                await publisher.publish(changes(10, first=1))
            assert producer.pending() == 0  # purged: the outbox sweep sends them again
        finally:
            broker.resume()
        await publisher.publish(changes(10, first=100))
    finally:
        producer.close()
    on_topic = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_changes)
    ids = {r["visitor_id"] for r in on_topic}
    assert {"p0", *(f"p{i}" for i in range(100, 110))} <= ids


async def test_a_publish_larger_than_the_client_queue_waits_for_room_and_sends_all(
    topics: Settings,
) -> None:
    # A queue of 64 records: the publish queues what fits, waits for acknowledgements, and
    # goes on from the first record not queued (none lost, none sent twice).
    producer = RdKafkaProducer(
        rdkafka_config(
            topics.kafka,
            topics.kafka.bootstrap,
            embedded=True,
            queue_max_events=64,
            queue_max_bytes=1024 * 1024,
            stall_s=30,
        )
    )
    producer.start(on_failure=lambda *_: None)
    try:
        records = changes(1000)
        await QueuedChangePublisher(producer, topics.kafka.topic_changes).publish(records)
        assert producer.pending() == 0
    finally:
        producer.close()
    on_topic = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_changes)
    assert sorted(r["change_id"] for r in on_topic) == sorted(str(r["change_id"]) for r in records)
