"""A real segmenter process SIGKILLed between the ClickHouse insert and the Kafka commit."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from leadback import events as ev
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.settings import Settings
from tests.conftest import run_sql_in_subprocess
from tests.integration.helpers import committed_count, wait_for

pytestmark = pytest.mark.integration


def canonical(i: int, now: float) -> dict[str, object]:
    return {
        "schema_version": 1,
        "event_id": f"crash-{i}",
        "site_id": "demo",
        "visitor_id": f"v{i % 13}",
        "type": "page_view",
        "name": None,
        "sent_at": None,
        "received_at": ev.format_ts(now),
        "anonymous_id": f"v{i % 13}",
        "user_id": None,
        "traits": {},
        "url": f"https://shop.example/{i}",
        "referrer": None,
        "utm": ev.empty_utm(),
        "click_ids": ev.empty_click_ids(),
        "properties": {},
        "context": {"user_agent": "UA", "ip": "198.51.100.0", "language": None},
        "consent": {
            "status": "granted",
            "purposes": ["all"],
            "gpc": False,
            "dnt": False,
            "tracking": True,
        },
        "bot": False,
        "source": "json",
    }


def segmenter_env(settings: Settings, chdb: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LEADBACK_KAFKA_BOOTSTRAP=settings.kafka.bootstrap,
        LEADBACK_KAFKA_IDEMPOTENT="false",
        # The embedded broker allows a short session: a killed member's partitions move on
        # about 7 s after, instead of about 11 s with the 6 s default (see services/segmenter).
        LEADBACK_KAFKA_SESSION_TIMEOUT_MS="3000",
        LEADBACK_KAFKA_TOPIC_EVENTS=settings.kafka.topic_events,
        LEADBACK_KAFKA_TOPIC_INVALID=settings.kafka.topic_invalid,
        LEADBACK_CLICKHOUSE_URL=f"chdb://{chdb}",
        LEADBACK_SEGMENTER_GROUP_ID=settings.segmenter.group_id,
        LEADBACK_SEGMENTER_FLUSH_INTERVAL_MS="200",
        LEADBACK_SEGMENTER_BATCH_MAX_EVENTS="400",
        LEADBACK_SEGMENTER_METRICS_PORT="0",
        LEADBACK_ADMIN_PORT="0",
        LEADBACK_DISPATCHER_ENABLED="false",  # the dispatcher's crash tests are its own
        LEADBACK_KAFKA_TOPIC_CHANGES=settings.kafka.topic_changes,
        LEADBACK_SEGMENTER_DRAIN_ON_SHUTDOWN="true",
        LEADBACK_LOG_LEVEL="info",
        LEADBACK_LOG_JSON="true",
    )
    env.update(extra)
    return env


def catch_up_env(*, fetch: int, batch: int) -> dict[str, str]:
    """Settings that make every fetch full (a backlog): batches are inserted one after the
    other and evaluated and committed together, at the end."""
    return {
        "LEADBACK_SEGMENTER_FETCH_MAX_RECORDS": str(fetch),
        "LEADBACK_SEGMENTER_BATCH_MAX_EVENTS": str(batch),
        "LEADBACK_SEGMENTER_CATCHUP_COMMIT_EVENTS": "100000",
        "LEADBACK_SEGMENTER_CATCHUP_COMMIT_S": "600",
    }


def crash_at(failpoint: str, env: dict[str, str]) -> None:
    """Run the segmenter until it SIGKILLs itself at ``failpoint``."""
    crashed = subprocess.run(
        [sys.executable, "-m", "leadback", "segmenter"],
        env={**env, "LEADBACK_FAILPOINTS": f"{failpoint}=kill"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]


async def produce_events(topics: Settings, n: int, now: float) -> None:
    """``n`` canonical events on the events topic, acknowledged by the broker."""
    producer = KafkaRecordProducer(
        **producer_options(topics.kafka, topics.kafka.bootstrap, embedded=True)
    )
    await producer.start()
    futures = []
    for i in range(n):
        event = canonical(i, now)
        key = ev.event_key("demo", str(event["visitor_id"]))
        futures.append(await producer.send(topics.kafka.topic_events, key, orjson.dumps(event)))
    for f in futures:
        await f
    await producer.stop()


async def restart_until_committed(
    topics: Settings, env: dict[str, str], n: int, log_path: Path
) -> bytes:
    """Run the segmenter again until its group has committed all ``n`` events of the topic
    (so every row is in ClickHouse: offsets are committed after the insert), then stop it
    with SIGTERM. Returns its log (stderr), kept in a file so a full pipe cannot block it."""
    cmd = [sys.executable, "-m", "leadback", "segmenter"]
    with log_path.open("wb") as log:
        survivor = subprocess.Popen(cmd, env=env, stderr=log, stdout=subprocess.DEVNULL)
    try:

        async def committed() -> int:
            assert survivor.poll() is None, log_path.read_bytes().decode()[-3000:]
            return await committed_count(
                topics.kafka.bootstrap, topics.segmenter.group_id, topics.kafka.topic_events
            )

        # The dead member's partitions come back only after its session times out.
        await wait_for(
            committed, n, what=f"the restarted segmenter to commit {n} events", timeout=60
        )
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=60)
    finally:
        if survivor.poll() is None:
            survivor.kill()
            survivor.wait()
    err = log_path.read_bytes()
    assert survivor.returncode == 0, err.decode()[-3000:]
    return err


async def test_sigkill_between_insert_and_commit_keeps_exactly_n_rows(
    topics: Settings, tmp_path: Path
) -> None:
    n = 2000
    now = time.time()
    await produce_events(topics, n, now)

    chdb = tmp_path / "seg-chdb"
    crash_at("segmenter.after_write", segmenter_env(topics, chdb))
    # The first batch landed but its offsets were never committed.
    landed = int(run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.events"))
    assert 0 < landed <= 400

    err = await restart_until_committed(
        topics, segmenter_env(topics, chdb), n, tmp_path / "survivor.log"
    )
    assert b"replaying an intended batch" in err
    total = run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.events")
    unique = run_sql_in_subprocess(chdb, "SELECT uniqExact(event_id) FROM leadback.events")
    assert (total, unique) == (str(n), str(n))


async def test_sigkill_while_catching_up_replays_every_uncommitted_range(
    topics: Settings, tmp_path: Path
) -> None:
    """A backlog: batches are inserted one after the other and committed together later. Killed
    with two ranges of one partition inserted and none committed, the next process must re-form
    both ranges from their intents (the second found after the first) and land no row twice."""
    n = 3000
    now = time.time()
    await produce_events(topics, n, now)

    chdb = tmp_path / "seg-chdb"
    catch_up = catch_up_env(fetch=50, batch=200)
    crash_at("segmenter.after_deferred_write", segmenter_env(topics, chdb, **catch_up))
    # At least two batches of one partition landed, and nothing was committed.
    landed = int(run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.events"))
    assert 400 <= landed < n

    err = await restart_until_committed(
        topics, segmenter_env(topics, chdb, **catch_up), n, tmp_path / "survivor.log"
    )
    replays = [
        orjson.loads(line)
        for line in err.splitlines()
        if b"replaying an intended batch" in line and line.startswith(b"{")
    ]
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for r in replays:
        by_partition.setdefault(r["partition"], []).append((r["first"], r["last"]))
    # One partition's ranges were replayed back to back: the chain of intents was followed.
    assert any(
        len(ranges) >= 2 and all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
        for ranges in by_partition.values()
    ), replays
    total = run_sql_in_subprocess(chdb, "SELECT count() FROM leadback.events")
    unique = run_sql_in_subprocess(chdb, "SELECT uniqExact(event_id) FROM leadback.events")
    assert (total, unique) == (str(n), str(n))
