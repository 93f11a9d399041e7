"""Pixel and JSON events through the real broker into the real ClickHouse engine."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest

from leadback.invalid import InvalidRecord, InvalidRequest
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.conftest import WRITE_KEY, run_ingest
from tests.integration.helpers import count, read_topic, run_segmenter, topic_size, wait_for

pytestmark = pytest.mark.integration

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def pixel_query(i: int) -> str:
    return urlencode(
        {
            "site": "demo",
            "type": "product_view",
            "url": f"https://shop.example/p/{i}?utm_source=news&utm_campaign=bf&gclid=G{i}",
            "ref": "https://www.google.com/",
            "pid": f"sku-{i}",
            "val": "19.90",
            "cur": "eur",
            "eid": f"px-{i}",
        }
    )


async def test_pixels_and_json_events_land_once_with_fields_right(
    topics: Settings, store: ClickHouseStore
) -> None:
    n = 150
    async with run_ingest(topics) as ingest, run_segmenter(topics, store):
        async with httpx.AsyncClient(base_url=ingest.url, timeout=10) as client:
            cookie_id = None
            for i in range(n):
                headers = {"user-agent": CHROME, "x-forwarded-for": "203.0.113.77"}
                if cookie_id and i % 2:
                    headers["cookie"] = f"lb_vid={cookie_id}"
                r = await client.get(f"/p.gif?{pixel_query(i)}", headers=headers)
                assert r.status_code == 200
                assert r.headers["content-type"] == "image/gif"
                assert len(r.content) == 43
                cookie_id = r.cookies.get("lb_vid") or cookie_id
            for start in range(0, n, 50):
                batch = [
                    {
                        "event_id": f"js-{i}",
                        "type": "add_to_cart",
                        "anonymous_id": f"anon-{i % 7}",
                        "properties": {"product_id": f"sku-{i}", "price": 5.5},
                        "context": {"ip": "2001:db8:abcd:12::1"},
                    }
                    for i in range(start, start + 50)
                ]
                r = await client.post(
                    "/v1/events",
                    json={"batch": batch},
                    headers={"authorization": f"Bearer {WRITE_KEY}"},
                )
                assert r.status_code == 200, r.text
                assert r.json()["accepted"] == 50
        await wait_for(
            lambda: count(store, "SELECT count() FROM {db}.events FINAL"),
            2 * n,
            what="every event in ClickHouse",
        )
    # Exactly once physically too: no retried batch was written twice.
    assert await count(store, "SELECT count() FROM {db}.events") == 2 * n
    rows = await store.query(
        f"SELECT site_id, type, url, referrer, utm.source, utm.campaign, click_ids.gclid,"
        f" context.ip, context.user_agent, JSONExtractString(properties, 'product_id'),"
        f" JSONExtractFloat(properties, 'value'), consent.tracking, bot, source"
        f" FROM {store.database}.events WHERE event_id = 'px-7'"
    )
    assert rows == [
        (
            "demo",
            "product_view",
            "https://shop.example/p/7?utm_source=news&utm_campaign=bf&gclid=G7",
            "https://www.google.com/",
            "news",
            "bf",
            "G7",
            "127.0.0.0",  # peer is loopback: X-Forwarded-For is not trusted by default
            CHROME,
            "sku-7",
            19.9,
            True,
            False,
            "pixel",
        )
    ]
    rows = await store.query(
        f"SELECT visitor_id, context.ip, type, source FROM {store.database}.events"
        f" WHERE event_id = 'js-3'"
    )
    assert rows == [("anon-3", "2001:db8:abcd::", "add_to_cart", "json")]


async def test_invalid_inputs_get_documented_answers_and_invalid_records(
    topics: Settings,
) -> None:
    async with (
        run_ingest(topics) as ingest,
        httpx.AsyncClient(base_url=ingest.url, timeout=10) as client,
    ):
        for query in ("type=page_view", "site=nope", "site=demo&type=teleport"):
            r = await client.get(f"/p.gif?{query}", headers={"user-agent": CHROME})
            assert r.status_code == 200
            assert r.headers["content-type"] == "image/gif"
            assert "set-cookie" not in r.headers
        auth = {"authorization": f"Bearer {WRITE_KEY}"}
        r = await client.post("/v1/events", content=b"{not json", headers=auth)
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_json"
        r = await client.post("/v1/events", content=b"x" * 600_000, headers=auth)
        assert r.status_code == 413
        r = await client.post(
            "/v1/events",
            json={"batch": [{"type": "page_view", "anonymous_id": "a"}]},
            headers={"authorization": "Bearer wrong-key"},
        )
        assert r.status_code == 401
        r = await client.post(
            "/v1/events",
            json={"batch": [{"type": "page_view"}, {"type": "nope", "anonymous_id": "a"}]},
            headers=auth,
        )
        assert r.status_code == 200
        body = r.json()
        assert body["accepted"] == 0
        assert [e["reason"] for e in body["errors"]] == ["missing_identity", "invalid_event"]
    # Ingest has stopped, and stopping flushed its producer: every record it sent is on the topics.
    bootstrap = topics.kafka.bootstrap
    invalid = await read_topic(bootstrap, topics.kafka.topic_invalid)
    reasons = sorted(r["reason"] for r in invalid)
    assert reasons == sorted(
        [
            "missing_site",
            "unknown_site",
            "invalid_type",
            "invalid_json",
            "payload_too_large",
            "unauthorized",
            "missing_identity",
            "invalid_event",
        ]
    )
    assert all("wrong-key" not in str(r) for r in invalid)
    for record in invalid:  # one shape for both paths (docs/asyncapi.yaml, InvalidInput)
        assert list(record) == list(InvalidRecord.__annotations__)
        assert list(record["request"]) == list(InvalidRequest.__annotations__)
        where = (record["source"], record["request"]["method"], record["request"]["path"])
        assert where in {("pixel", "GET", "/p.gif"), ("json", "POST", "/v1/events")}
    assert await topic_size(bootstrap, topics.kafka.topic_events) == 0
