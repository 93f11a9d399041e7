"""The whole way on real parts: pixels -> ingest -> broker -> segmenter -> cart abandoners ->
dispatcher -> a real SMTP server; then the one-click unsubscribe and a purchase stop the
second step."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml

from leadback.audiences.repository import AudienceRepository
from leadback.audiences.rules import parse_audiences
from leadback.campaigns.document import parse_document
from leadback.campaigns.repository import CampaignRepository
from leadback.dispatcher.member import Dispatcher
from leadback.dispatcher.service import build_dispatcher
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.conftest import run_ingest
from tests.fakes.smtp import FakeSmtp, smtp_server
from tests.integration.helpers import count, run_segmenter, wait_for

pytestmark = pytest.mark.integration

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"}  # not a bot

AUDIENCES = """
audiences:
  - id: carts
    site: demo
    rule:
      all:
        - did: {event: add_to_cart, within: 7d}
        - not: {did: {event: purchase}}
"""


def campaigns(smtp: FakeSmtp) -> str:
    return f"""
destinations:
  - id: smtp
    kind: email
    host: 127.0.0.1
    port: {smtp.port}
    security: none
    from_address: shop@example.com
    from_name: The Shop
campaigns:
  - id: cart-recovery
    site: demo
    audience: carts
    steps:
      - wait: 0s
        destination: smtp
        subject: "You left {{{{ traits.plan | default('something') }}}} in your cart"
        text: "Come back! Unsubscribe: {{{{ unsubscribe_url }}}}"
        html: "<p>Come back, {{{{ traits.plan }}}} fan</p>"
      - wait: 6s
        destination: smtp
        subject: Last chance
        text: Still there?
"""


@contextlib.asynccontextmanager
async def dispatching(settings: Settings, store: ClickHouseStore) -> AsyncIterator[Dispatcher]:
    dead = KafkaRecordProducer(
        **producer_options(settings.kafka, settings.kafka.bootstrap, embedded=True)
    )
    await dead.start()
    dispatcher = build_dispatcher(settings, store, settings.kafka.bootstrap, dead, embedded=True)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await task
        await dead.stop()


async def visit(base: str, *pixels: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base, timeout=10, headers=BROWSER)
    for query in pixels:
        r = await client.get(f"/p.gif?site=demo&{query}")
        assert r.status_code == 200
    return client


async def test_pixels_to_one_email_then_unsubscribe_and_purchase_stop_the_rest(
    topics: Settings, store: ClickHouseStore
) -> None:
    async with smtp_server() as smtp, run_ingest(topics) as ingest:
        settings = topics.model_copy(
            update={
                "dispatcher": topics.dispatcher.model_copy(
                    update={"public_url": ingest.url, "timer_interval_ms": 200}
                ),
                "audiences": topics.audiences.model_copy(update={"timer_interval_ms": 200}),
            }
        )
        await migrate(store)
        for spec in parse_audiences(yaml.safe_load(AUDIENCES)):
            await AudienceRepository(store).put(spec)
        await CampaignRepository(store).apply(
            parse_document(yaml.safe_load(campaigns(smtp))), sites=None
        )
        async with run_segmenter(settings, store), dispatching(settings, store):
            ann = await visit(
                ingest.url,
                "type=identify&tr.email=ann%40example.com&tr.plan=gold",
                "type=add_to_cart",
            )
            bob = await visit(
                ingest.url, "type=identify&tr.email=bob%40example.com", "type=add_to_cart"
            )
            await wait_for(lambda: _sent(smtp), 2, what="one e-mail each", timeout=60)
            by_rcpt = {m.rcpt_tos[0]: m.message for m in smtp.messages}
            assert sorted(by_rcpt) == ["ann@example.com", "bob@example.com"]
            mail = by_rcpt["ann@example.com"]
            assert mail["Subject"] == "You left gold in your cart"
            assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            link = re.search(r"<(http[^>]+)>", mail["List-Unsubscribe"])
            assert link is not None and link.group(1).startswith(ingest.url)
            html = mail.get_body(("html",))
            assert html is not None and "gold fan" in html.get_content()
            # Ann unsubscribes with one click; Bob buys.
            async with httpx.AsyncClient(timeout=10) as mail_client:
                r = await mail_client.post(link.group(1), data={"List-Unsubscribe": "One-Click"})
            assert r.status_code == 200
            r = await bob.get("/p.gif?site=demo&type=purchase")
            assert r.status_code == 200
            await wait_for(
                lambda: count(
                    store,
                    "SELECT count() FROM (SELECT delivery_id, argMax(status, seq) AS s "
                    "FROM {db}.deliveries GROUP BY delivery_id) WHERE s IN "
                    "('suppressed', 'cancelled')",
                ),
                2,
                what="Ann's second step suppressed, Bob's cancelled",
                timeout=60,
            )
            await asyncio.sleep(1.0)  # nothing else goes out
            assert len(smtp.messages) == 2
            for client in (ann, bob):
                await client.aclose()
    rows = await store.query(
        f"SELECT person_id, step, argMax(status, seq) FROM {store.database}.deliveries "
        "GROUP BY delivery_id, person_id, step ORDER BY step, 3"
    )
    assert sorted((int(r[1]), str(r[2])) for r in rows) == [
        (0, "sent"),
        (0, "sent"),
        (1, "cancelled"),
        (1, "suppressed"),
    ]


async def _sent(smtp: FakeSmtp) -> int:
    return len(smtp.messages)
