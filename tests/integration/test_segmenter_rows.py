"""The segmenter keeps bad records visible and counts a repeated event once."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
import yaml

from leadback import events as ev
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.repository import AudienceRepository
from leadback.audiences.rules import parse_audiences
from leadback.broker import EmbeddedBroker
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.kafka.topics import ensure_topics, leadback_topics
from leadback.segmenter.member import Segmenter
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
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
    # The one documented shape (docs/asyncapi.yaml): the refused value is the request body.
    bodies = {r["reason"]: r["request"]["body"] for r in invalid}
    assert bodies == {"not_json": "{not json", "missing_site_id": '{"event_id": "x"}'}
    assert {r["schema_version"] for r in invalid} == {1}


async def _produce(settings: Settings, values: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaRecordProducer(
        **producer_options(settings.kafka, settings.kafka.bootstrap, embedded=True)
    )
    await producer.start()
    futures = [await producer.send(settings.kafka.topic_events, k, v) for k, v in values]
    for f in futures:
        await f
    await producer.stop()


def _event(i: int, now: float, visitor: str, etype: str, user_id: str | None = None) -> bytes:
    e = canonical(i, now)
    e.update(visitor_id=visitor, anonymous_id=visitor, type=etype, user_id=user_id)
    return orjson.dumps(e)


async def test_a_backlog_is_inserted_in_many_batches_and_evaluated_in_few_rounds(
    make_settings: Callable[..., Settings], broker: EmbeddedBroker
) -> None:
    settings = make_settings(
        segmenter={
            "fetch_max_records": 50,  # every fetch of the backlog is full
            "batch_max_events": 200,
            "catchup_commit_events": 100_000,
            "catchup_commit_s": 600,
        }
    )
    await ensure_topics(broker.bootstrap, leadback_topics(settings.kafka))
    now = time.time()
    # 100 visitors; visitor k < 20 identifies as user u<k> once, spread over the backlog.
    identifies = {k + 100 * (k + 5): k for k in range(20)}
    values: list[tuple[bytes, bytes]] = []
    for i in range(3000):
        visitor = f"v{i % 100}"
        if i in identifies:
            event = _event(i, now, visitor, "identify", f"u{identifies[i]}")
        else:
            event = _event(i, now, visitor, "page_view")
        values.append((ev.event_key("demo", visitor), event))
    expected_viewers = {f"u:u{k}" for k in range(20)} | {f"v{n}" for n in range(20, 100)}
    await _produce(settings, values)
    store = ClickHouseStore(settings.clickhouse)
    try:
        await migrate(store)
        for spec in parse_audiences(
            yaml.safe_load("{id: viewers, site: demo, rule: {did: {event: page_view}}}")
        ):
            await AudienceRepository(store).put(spec)
        async with run_segmenter(settings, store) as seg:
            await wait_for(lambda: _inserted(seg), 3000, timeout=60)
            engine = seg.observer
            assert isinstance(engine, AudienceEngine)
            evaluations = engine.stats.evaluations
        assert seg.stats.events_inserted == 3000
        assert seg.stats.batches_inserted >= 15
        # Many batches, few evaluations and commits: the backlog waits for one round.
        assert seg.stats.rounds <= seg.stats.batches_inserted // 3, seg.stats
        assert evaluations <= seg.stats.rounds + 1
        # A deferred round lasts from its first write to its commit: longer than its last write.
        assert seg.stats.last_round_seconds >= seg.stats.last_insert_seconds > 0, seg.stats
        assert await count(store, "SELECT count() FROM {db}.events") == 3000
        members = await store.query(
            f"SELECT person_id FROM {store.database}.memberships FINAL "
            "WHERE audience_id = 'viewers' AND state = 'in'"
        )
        # Identity links of every deferred batch were applied before the one evaluation.
        assert {str(r[0]) for r in members} == expected_viewers
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {store.database}")
        await store.close()


async def _inserted(seg: Segmenter) -> int:
    return seg.stats.events_inserted


async def test_a_second_member_takes_partitions_and_no_row_lands_twice(
    make_settings: Callable[..., Settings], broker: EmbeddedBroker
) -> None:
    settings = make_settings(audiences={"enabled": False})
    await ensure_topics(broker.bootstrap, leadback_topics(settings.kafka))
    now = time.time()

    def batch(first: int, n: int) -> list[tuple[bytes, bytes]]:
        return [
            (ev.event_key("demo", f"v{i % 50}"), _event(i, now, f"v{i % 50}", "page_view"))
            for i in range(first, first + n)
        ]

    await _produce(settings, batch(0, 2000))
    store_a, store_b = ClickHouseStore(settings.clickhouse), ClickHouseStore(settings.clickhouse)
    revoked: list[set[int]] = []
    try:
        async with run_segmenter(settings, store_a) as a:
            await wait_for(lambda: _inserted(a), 2000, timeout=60)
            assert a.assignment == {0, 1, 2}
            async with run_segmenter(settings, store_b) as b:
                sent = 2000

                async def produce_more() -> set[int]:
                    nonlocal sent
                    await _produce(settings, batch(sent, 100))
                    sent += 100
                    if len(a.assignment) < 3:
                        revoked.append(set(a.assignment))
                    return b.assignment

                # Records keep coming while the group rebalances, until the second member
                # owns partitions, and once more after.
                await wait_for(
                    produce_more,
                    until=bool,
                    what="partitions for the second member",
                    timeout=60,
                    interval=0.5,
                )
                await produce_more()
                total = lambda: count(store_a, "SELECT count() FROM {db}.events")  # noqa: E731
                await wait_for(total, sent, what=f"{sent} rows", timeout=60)
                await wait_for(lambda: _sizes(a, b), (True, True), timeout=30)
                assert a.assignment.isdisjoint(b.assignment)
                assert a.assignment | b.assignment == {0, 1, 2}
        assert revoked, "the first member never gave up a partition"
        assert await count(store_a, "SELECT count() FROM {db}.events") == sent
        assert await count(store_a, "SELECT uniqExact(event_id) FROM {db}.events") == sent
    finally:
        await store_a.command(f"DROP DATABASE IF EXISTS {store_a.database}")
        await store_a.close()
        await store_b.close()


async def _sizes(a: Segmenter, b: Segmenter) -> tuple[bool, bool]:
    return bool(a.assignment), bool(b.assignment)


async def test_batches_of_all_partitions_together_stay_under_the_buffer_limit(
    make_settings: Callable[..., Settings], broker: EmbeddedBroker
) -> None:
    settings = make_settings(
        audiences={"enabled": False},
        segmenter={
            "fetch_max_records": 50,
            "batch_max_events": 100_000,
            "batch_max_bytes": 64 * 1024 * 1024,
            "buffer_max_bytes": 40_000,  # about fifty events over the three partitions
        },
    )
    await ensure_topics(broker.bootstrap, leadback_topics(settings.kafka))
    now = time.time()
    values = [
        (ev.event_key("demo", f"v{i % 30}"), _event(i, now, f"v{i % 30}", "page_view"))
        for i in range(1500)
    ]
    size = sum(len(v) for _, v in values)
    await _produce(settings, values)
    store = ClickHouseStore(settings.clickhouse)
    try:
        async with run_segmenter(settings, store) as seg:
            await wait_for(lambda: _inserted(seg), 1500, timeout=60)
        # Flushed by the shared limit (each at most a fetch past it), long before any batch
        # reached its own: without it, one batch per partition.
        assert seg.stats.batches_inserted >= size // (2 * 40_000)
        assert await count(store, "SELECT count() FROM {db}.events") == 1500
        assert await count(store, "SELECT uniqExact(event_id) FROM {db}.events") == 1500
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {store.database}")
        await store.close()
