"""The segmenter keeps bad records visible and counts a repeated event once."""

from __future__ import annotations

import time

import orjson
import pytest

from leadback import events as ev
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.integration.helpers import count, read_topic, run_segmenter, wait_for
from tests.integration.test_crash_recovery import canonical

pytestmark = pytest.mark.integration


async def test_garbage_goes_to_invalid_topic_and_duplicates_count_once(
    topics: Settings, store: ClickHouseStore
) -> None:
    now = time.time()
    producer = KafkaRecordProducer(
        **producer_options(topics.kafka, topics.kafka.bootstrap, embedded=True)
    )
    await producer.start()
    good = [orjson.dumps(canonical(i, now)) for i in range(20)]
    values = [*good, b"{not json", b'{"event_id": "x"}', good[3], good[4]]  # 2 producer retries
    futures = [
        await producer.send(topics.kafka.topic_events, ev.event_key("demo", "v"), v) for v in values
    ]
    for f in futures:
        await f
    await producer.stop()
    async with run_segmenter(topics, store) as seg:
        await wait_for(lambda: count(store, "SELECT count() FROM {db}.events FINAL"), 20)
        assert seg.stats.events_quarantined == 2
    assert await count(store, "SELECT count() FROM {db}.events FINAL") == 20
    assert await count(store, "SELECT uniqExact(event_id) FROM {db}.events") == 20
    invalid = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_invalid)
    assert sorted(r["reason"] for r in invalid) == ["missing_site_id", "not_json"]
    assert {r["source"] for r in invalid} == {"segmenter"}
