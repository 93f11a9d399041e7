"""Audience changes on the real change topic: from pixels, on the timer, and across a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from leadback import events as ev
from leadback.audiences.repository import AudienceRepository
from leadback.audiences.rules import parse_audiences
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.conftest import run_ingest, run_sql_in_subprocess
from tests.integration.audience_kit import event
from tests.integration.helpers import read_topic, run_segmenter, wait_for
from tests.integration.test_crash_recovery import (
    catch_up_env,
    crash_at,
    restart_until_committed,
    segmenter_env,
)

pytestmark = pytest.mark.integration

AUDIENCES = """
- id: contact_visitors
  site: demo
  rule:
    all:
      - did: {event: page_view, where: [{field: url, op: contains, value: /contact}]}
      - not: {did: {event: lead}}
- id: quick_abandoners
  site: demo
  rule:
    all:
      - then_not: {did: {event: add_to_cart}, then: {event: purchase}}
      - idle: 2s
"""


def apply_offline(chdb: Path) -> None:
    """The test audiences, written before the segmenter starts (the chDB directory belongs to
    one process)."""
    out = subprocess.run(
        [sys.executable, "-m", "leadback", "audiences", "apply", "--offline", "-f", "-"],
        input=AUDIENCES.encode(),
        env={**os.environ, "LEADBACK_CLICKHOUSE_URL": f"chdb://{chdb}"},
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.decode().count("written demo/") == 2


async def produce_contact_views(topics: Settings, visitors: list[str]) -> None:
    """One contact-page view per visitor on the events topic, acknowledged by the broker."""
    producer = KafkaRecordProducer(
        **producer_options(topics.kafka, topics.kafka.bootstrap, embedded=True)
    )
    await producer.start()
    now = time.time()
    futures = []
    for i, v in enumerate(visitors):
        e = event("demo", v, "page_view", now, url=f"https://shop.example/contact/{i}")
        futures.append(
            await producer.send(topics.kafka.topic_events, ev.event_key("demo", v), orjson.dumps(e))
        )
    for f in futures:
        await f
    await producer.stop()


async def changes_by_key(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes, dict[str, Any]]] = []
        while batch := await consumer.getmany(timeout_ms=1500):
            for records in batch.values():
                out.extend((r.key, orjson.loads(r.value)) for r in records)
        return out
    finally:
        await consumer.stop()


async def wait_changes(settings: Settings, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The change topic once it holds at least ``n`` records."""
    topic = settings.kafka.topic_changes
    changes: list[dict[str, Any]] = await wait_for(
        lambda: read_topic(settings.kafka.bootstrap, topic, idle_ms=300),
        until=lambda got: len(got) >= n,
        what=f"{n} records on {topic}",
        timeout=timeout,
    )
    return changes


async def test_pixels_make_enters_and_exits_on_the_change_topic(
    make_settings: Any, broker: Any, store: ClickHouseStore
) -> None:
    from leadback.kafka.topics import ensure_topics, leadback_topics

    settings = make_settings(audiences={"timer_interval_ms": 100})
    await ensure_topics(broker.bootstrap, leadback_topics(settings.kafka))
    store = ClickHouseStore(settings.clickhouse)
    await migrate(store)
    repo = AudienceRepository(store)
    for spec in parse_audiences(__import__("yaml").safe_load(AUDIENCES)):
        await repo.put(spec)

    def pixel(aid: str, etype: str, url: str = "https://shop.example/") -> str:
        return "/p.gif?" + urlencode({"site": "demo", "type": etype, "aid": aid, "url": url})

    async with run_ingest(settings) as ingest, run_segmenter(settings, store):
        browser = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"}
        async with httpx.AsyncClient(base_url=ingest.url, timeout=10, headers=browser) as client:
            await client.get(pixel("vis-1", "page_view", "https://shop.example/contact"))
            await client.get(pixel("vis-2", "add_to_cart"))
            await client.get(pixel("vis-3", "page_view", "https://shop.example/about"))
            got = await wait_changes(settings, 2)
            assert sorted((c["audience_id"], c["visitor_id"], c["change"]) for c in got) == [
                ("contact_visitors", "vis-1", "enter"),
                ("quick_abandoners", "vis-2", "enter"),  # two seconds idle, by the timer
            ]
            await client.get(pixel("vis-1", "lead"))
            await client.get(pixel("vis-2", "purchase"))
            await wait_changes(settings, 4)
    await store.close()
    keyed = await changes_by_key(settings.kafka.bootstrap, settings.kafka.topic_changes)
    assert len(keyed) == 4
    for key, change in keyed:
        assert key == f"demo:{change['visitor_id']}".encode()
        assert change["schema_version"] == 1
        assert change["change_id"] == (
            f"{change['audience_id']}:{change['visitor_id']}:{change['version']}"
        )
        assert change["at"].endswith("Z")
    final = {(c["audience_id"], c["visitor_id"]): c for _, c in keyed if c["change"] == "exit"}
    assert final[("contact_visitors", "vis-1")]["version"] == 2
    assert final[("quick_abandoners", "vis-2")]["reason"] == "no_longer_qualifies"


async def test_changes_survive_a_crash_before_publishing_with_the_same_versions(
    topics: Settings, tmp_path: Path
) -> None:
    chdb = tmp_path / "seg-chdb"
    apply_offline(chdb)
    visitors = [f"c{i}" for i in range(60)]
    await produce_contact_views(topics, visitors)

    env = segmenter_env(topics, chdb, LEADBACK_SEGMENTER_BATCH_MAX_EVENTS="25")
    crash_at("audiences.before_publish", env)
    logged = int(run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.audience_changes"))
    assert 0 < logged <= len(visitors)  # the first round is logged, none published
    assert await read_topic(topics.kafka.bootstrap, topics.kafka.topic_changes, idle_ms=500) == []

    # Every event committed means every round was evaluated; the changes producer is flushed
    # when the process stops.
    err = await restart_until_committed(topics, env, len(visitors), tmp_path / "survivor.log")
    assert b"republished logged changes" in err
    got = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_changes)
    seen = sorted((c["visitor_id"], c["change"], c["version"]) for c in got)
    assert seen == sorted((v, "enter", 1) for v in visitors)


async def test_crash_before_a_multi_batch_rounds_memberships_gives_no_version_two_contents(
    topics: Settings, tmp_path: Path
) -> None:
    """Killed between the change-log insert and the memberships insert of a round that covered
    several batches (catch-up): the restarted segmenter replays the batches in other rounds
    (other tokens), so only the change log can say what was decided. Every (audience, visitor,
    version) must reach the topic with one content, and every visitor enter exactly once."""
    chdb = tmp_path / "seg-chdb"
    apply_offline(chdb)
    visitors = [f"m{i}" for i in range(120)]
    await produce_contact_views(topics, visitors)
    env = segmenter_env(topics, chdb, **catch_up_env(fetch=20, batch=20))
    crash_at("audiences.before_memberships", env)
    logged = int(run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.audience_changes"))
    rounds = run_sql_in_subprocess(chdb, "SELECT uniqExact(token) FROM leadback.audience_changes")
    intents = int(run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.segmenter_batches"))
    # One round's changes were logged, from a round of several batches, and none applied.
    assert logged > 0 and rounds == "1", (logged, rounds)
    assert intents >= 2
    assert run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.memberships") == "0"

    await restart_until_committed(topics, env, len(visitors), tmp_path / "survivor.log")
    got = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_changes)
    contents: dict[tuple[str, str, int], set[bytes]] = {}
    for c in got:
        contents.setdefault((c["audience_id"], c["visitor_id"], c["version"]), set()).add(
            orjson.dumps(c, option=orjson.OPT_SORT_KEYS)
        )
    twice = {k: v for k, v in contents.items() if len(v) > 1}
    example = next(iter(twice.items()), None)
    assert not twice, f"{len(twice)} versions published with two contents, e.g. {example}"
    assert sorted(k for k in contents if k[0] == "contact_visitors") == sorted(
        ("contact_visitors", v, 1) for v in visitors
    )
    members = run_sql_in_subprocess(
        chdb,
        "SELECT count() FROM leadback.memberships FINAL "
        "WHERE audience_id = 'contact_visitors' AND state = 'in' AND version = 1",
    )
    assert members == str(len(visitors))
