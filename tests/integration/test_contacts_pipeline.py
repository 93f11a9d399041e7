"""Contact details through the real broker into the real ClickHouse engine: never in clear."""

from __future__ import annotations

import httpx
import orjson
import pytest

from leadback.identity.contacts import sha256_hex
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.conftest import WRITE_KEY, run_ingest
from tests.integration.helpers import count, read_topic, run_segmenter, wait_for

pytestmark = pytest.mark.integration

CLEAR = ["Ann.Lee", "ann.lee", "example.com", "5550123"]


async def test_contact_traits_are_hashed_on_the_topic_and_in_clickhouse(
    topics: Settings, store: ClickHouseStore
) -> None:
    async with run_ingest(topics) as ingest, run_segmenter(topics, store):
        async with httpx.AsyncClient(base_url=ingest.url, timeout=10) as client:
            r = await client.get(
                "/p.gif?site=demo&type=identify&eid=px-c&uid=u-1"
                "&tr.email=Ann.Lee%40Example.com&tr.phone=%2B1-415-555-0123&tr.plan=pro"
            )
            assert r.status_code == 200
            r = await client.get("/p.gif?site=demo&eid=px-bad&tr.email=Ann.Lee%40Example")
            assert r.status_code == 200
            batch = [
                {"event_id": "js-c", "type": "identify", "user_id": "u-2",
                 "traits": {"mail": " ANN.LEE@example.com", "mobile": "+14155550123"}},
                {"event_id": "js-bad", "type": "identify", "user_id": "u-3",
                 "traits": {"email_sha256": "0" * 64, "fn": "Ann.Lee"}},
            ]  # fmt: skip
            r = await client.post(
                "/v1/events", json={"batch": batch}, headers={"x-write-key": WRITE_KEY}
            )
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == 1
        await wait_for(
            lambda: count(store, "SELECT count() FROM {db}.events FINAL"),
            2,
            what="the two valid events in ClickHouse",
        )
    events = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_events)
    invalid = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_invalid)
    assert sorted(r["reason"] for r in invalid) == ["invalid_trait", "invalid_trait"]
    by_source = {r["source"]: r["request"] for r in invalid}
    assert by_source["pixel"]["query"] == "site=demo&eid=px-bad&tr.email=[redacted]"
    assert orjson.loads(by_source["json"]["body"])["traits"] == {
        "email_sha256": "[redacted]",
        "fn": "[redacted]",
    }
    wire = orjson.dumps([events, invalid]).decode()
    rows = await store.query(f"SELECT event_id, traits FROM {store.database}.events ORDER BY 1")
    stored = repr(rows)
    for clear in CLEAR:
        assert clear not in wire
        assert clear not in stored
    email, phone = sha256_hex("ann.lee@example.com"), sha256_hex("+14155550123")
    traits = {event_id: orjson.loads(text) for event_id, text in rows}
    assert traits["px-c"]["plan"] == "pro"
    for event_id in ("px-c", "js-c"):
        assert traits[event_id]["email_sha256"] == email
        assert traits[event_id]["phone_sha256"] == phone
