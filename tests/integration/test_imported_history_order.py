"""Imported history arrives after newer facts: by event time, it does not overrule them. A
person's latest consent is the one given last in real time; contact traits given earlier do
not replace newer ones, and the keys only the old event had are kept."""

from __future__ import annotations

import orjson
import pytest

from leadback import events as ev
from leadback.dispatcher.recipients import RecipientLoader
from leadback.identity.contact_book import ContactBook, ContactUpdate
from leadback.identity.contacts import ContactCipher
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.test_crash_recovery import canonical

pytestmark = pytest.mark.integration

NOW_MS = 1_800_000_000_000
DAY_MS = 86_400_000


def _event(event_id: str, status: str, *, occurred_ms: int, received_ms: int) -> bytes:
    event = canonical(0, 0)
    event.update(
        event_id=event_id,
        visitor_id="v1",
        anonymous_id="v1",
        received_at=ev.format_ms(received_ms),
        occurred_at=ev.format_ms(occurred_ms),
        consent={
            "status": status,
            "purposes": ["all"] if status == "granted" else [],
            "gpc": False,
            "dnt": False,
            "tracking": status == "granted",
        },
    )
    return orjson.dumps(event)


async def test_an_imported_old_consent_does_not_overrule_a_newer_opt_out(
    store: ClickHouseStore,
) -> None:
    await migrate(store)
    live_opt_out = _event("live", "denied", occurred_ms=NOW_MS, received_ms=NOW_MS)
    imported_grant = _event(
        "old", "granted", occurred_ms=NOW_MS - 30 * DAY_MS, received_ms=NOW_MS + 60_000
    )
    await store.insert_json_rows("events", live_opt_out + b"\n" + imported_grant, dedup_token="c")
    loader = RecipientLoader(store, ContactCipher([ContactCipher.generate_key()]))
    people = await loader.load("demo", ["v1"], [], kinds=())
    assert people["v1"].consent is False


async def test_older_traits_fill_gaps_without_replacing_newer_ones(store: ClickHouseStore) -> None:
    await migrate(store)
    book = ContactBook(store)
    new = ContactUpdate("", ev.format_ms(NOW_MS), {"plan": "pro"})
    await book.save("demo", {"v1": new}, token="live")
    old = ContactUpdate("", ev.format_ms(NOW_MS - 30 * DAY_MS), {"plan": "free", "city": "x"})
    await book.save("demo", {"v1": old}, token="import")
    rows = await store.query(
        f"SELECT argMax(traits, updated_at) FROM {store.database}.contacts WHERE visitor_id = 'v1'"
    )
    assert orjson.loads(rows[0][0]) == {"plan": "pro", "city": "x"}
    newer = ContactUpdate("", ev.format_ms(NOW_MS + 1000), {"plan": "team"})
    await book.save("demo", {"v1": newer}, token="live2")
    rows = await store.query(
        f"SELECT argMax(traits, updated_at) FROM {store.database}.contacts WHERE visitor_id = 'v1'"
    )
    assert orjson.loads(rows[0][0]) == {"plan": "team", "city": "x"}
