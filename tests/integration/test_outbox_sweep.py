"""The outbox's sweep: over the whole change log at start, then only what can still be pending.

A periodic sweep reads the changes of the last hour and those whose publish failed in this
process, however old: the log grows by every change, and a scan of all of it under the rounds'
lock would stall rounds for longer every day. A change another process left unpublished longer
ago is found by the next start's sweep, which reads the whole log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from leadback.audiences.changes import ChangeRecord
from leadback.audiences.outbox import SWEEP_LOOKBACK_MS, AudienceStats, ChangeOutbox
from leadback.errors import BrokerUnavailableError
from leadback.store.client import ClickHouseStore

NOW = 1_796_000_000_000
HOUR = 3_600_000


class FlakyPublisher:
    """Keeps what it publishes; raises ``BrokerUnavailableError`` while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.published: list[str] = []

    async def publish(self, records: Sequence[ChangeRecord]) -> None:
        if self.down:
            raise BrokerUnavailableError("broker away")
        self.published.extend(str(r["visitor_id"]) for r in records)


def _change(person: str, at: int, token: str) -> dict[str, Any]:
    return {
        "site_id": "shop",
        "audience_id": "buyers",
        "person_id": person,
        "change": "enter",
        "reason": "qualifies",
        "version": 1,
        "audience_version": 1,
        "products": [],
        "at": at,
        "entered_at": at,
        "token": token,
    }


async def _log(db: ClickHouseStore, person: str, at: int) -> None:
    """A change logged by a process that stopped before publishing it."""
    body = orjson.dumps(_change(person, at, f"crashed:{person}"))
    await db.insert_json_rows("audience_changes", body, dedup_token=f"log:{person}")


async def test_a_periodic_sweep_reads_the_last_hour_and_the_start_sweep_everything(
    db: ClickHouseStore,
) -> None:
    await _log(db, "long-ago", NOW - 2 * HOUR)
    await _log(db, "recent", NOW - 10 * 60_000)
    publisher = FlakyPublisher()
    outbox = ChangeOutbox(db, publisher, AudienceStats())
    await outbox.sweep(now_ms=NOW)
    assert publisher.published == ["recent"]
    await outbox.sweep()  # at start: the whole log
    assert publisher.published == ["recent", "long-ago"]
    await outbox.sweep()
    await outbox.sweep(now_ms=NOW)
    assert publisher.published == ["recent", "long-ago"]  # each once: marked published


async def test_a_change_whose_publish_failed_is_swept_however_old(db: ClickHouseStore) -> None:
    publisher = FlakyPublisher()
    outbox = ChangeOutbox(db, publisher, AudienceStats())
    publisher.down = True
    at = NOW - 3 * HOUR
    change = _change("waiting", at, "round-1")
    membership = {k: v for k, v in change.items() if k not in ("change", "reason", "at", "token")}
    await outbox.write(
        "round-1", [change], [orjson.dumps({**membership, "state": "in", "changed_at": at})]
    )
    assert outbox.failed_since == at
    await outbox.sweep(now_ms=NOW)  # still down: tried again, still remembered
    assert publisher.published == [] and outbox.failed_since == at
    publisher.down = False
    await outbox.sweep(now_ms=NOW + SWEEP_LOOKBACK_MS)
    assert publisher.published == ["waiting"]
    assert outbox.failed_since is None
