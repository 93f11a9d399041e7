"""``leadback events import`` against the real broker, segmenter and ClickHouse: imported
events keep their own time (``occurred_at``) and are received now; importing the same file
again stores nothing twice."""

from __future__ import annotations

import asyncio
import gzip
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from leadback import events as ev
from leadback.cli.import_progress import import_events
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.integration.helpers import count, run_segmenter, wait_for

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def _lines(now_ms: int) -> list[dict[str, object]]:
    """20 events dated 30 days ago (a minute apart): JSON API and Segment shapes, mixed."""
    out: list[dict[str, object]] = []
    for i in range(20):
        at = ev.format_ms(now_ms - 30 * DAY_MS + i * 60_000)
        if i % 2:
            out.append(
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "messageId": f"seg-{i}",
                    "anonymousId": f"v{i % 4}",
                    "timestamp": at,
                    "properties": {"product_id": f"sku-{i}"},
                }
            )
        else:
            out.append(
                {
                    "event_id": f"json-{i}",
                    "site_id": "demo",
                    "type": "add_to_cart",
                    "anonymous_id": f"v{i % 4}",
                    "timestamp": at,
                }
            )
    return out


async def test_imported_events_keep_their_time_and_land_once(
    topics: Settings, store: ClickHouseStore, tmp_path: Path
) -> None:
    now_ms = int(time.time() * 1000)
    lines = _lines(now_ms)
    path = tmp_path / "history.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(x) + b"\n" for x in lines)))

    def run_import() -> int:
        return import_events(
            topics, str(path), site="demo", dry_run=False, batch_size=7, skip_invalid=False
        )

    assert await asyncio.to_thread(run_import) == 0
    assert await asyncio.to_thread(run_import) == 0  # again: the same event ids
    async with run_segmenter(topics, store):
        await wait_for(
            lambda: count(store, "SELECT count() FROM {db}.events"),
            40,
            what="both imports in ClickHouse",
        )
    assert await count(store, "SELECT count() FROM {db}.events FINAL") == 20
    rows = await store.query(
        "SELECT event_id, type, toUnixTimestamp64Milli(occurred_at), "
        f"toUnixTimestamp64Milli(received_at) FROM {store.database}.events FINAL"
    )
    expected = {
        str(x.get("event_id") or x.get("messageId")): ev.datetime_ms(
            datetime.fromisoformat(str(x["timestamp"])).astimezone(UTC)
        )
        for x in lines
    }
    assert {str(r[0]): int(r[2]) for r in rows} == expected
    assert {str(r[1]) for r in rows} == {"add_to_cart", "product_view"}
    for _, _, _, received in rows:  # received by the import, just now
        assert now_ms - 1000 <= int(received) <= int(time.time() * 1000)
    partitions = await count(store, "SELECT uniqExact(_partition_id) FROM {db}.events")
    assert partitions <= 2  # monthly, on the event time
