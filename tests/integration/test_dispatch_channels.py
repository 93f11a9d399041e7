"""Every channel through the dispatcher, against its provider's fake: addresses come from the
contacts (decrypted at send time), push subscriptions and Telegram links (signals through
the events table), and what a provider says about a recipient is remembered."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from leadback.destinations.push_subscription import endpoint_sha256, subscription_json
from leadback.identity.contact_book import ContactBook, ContactUpdate
from leadback.identity.contacts import ContactCipher, protect_traits
from leadback.ingest.signals import signal_event
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.fakes.http_server import serve_app
from tests.fakes.push_service import FakePushService, serve_push_service
from tests.fakes.smtp import FakeSmtp, smtp_server
from tests.fakes.telegram import FakeTelegram
from tests.fakes.twilio import FakeTwilio
from tests.integration.audience_kit import event
from tests.integration.dispatch_kit import Harness, harness

pytestmark = pytest.mark.integration

SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
BOT_TOKEN = "123456789:AAF" + "x" * 32

AUDIENCES = """
- id: carts
  site: demo
  rule: {did: {event: add_to_cart}}
"""


def campaigns(smtp: FakeSmtp, twilio: str, telegram: str, vapid_public: str) -> str:
    return f"""
destinations:
  - {{id: mail, kind: email, host: 127.0.0.1, port: {smtp.port}, security: none,
     from_address: shop@example.com}}
  - {{id: sms, kind: sms, base_url: "{twilio}", account_sid: {SID},
     auth_token: {{env: T_TWILIO}}, from_number: "+15005550006"}}
  - {{id: bot, kind: telegram, base_url: "{telegram}", bot_token: {{env: T_BOT}},
     bot_username: shop_bot}}
  - {{id: push, kind: webpush, vapid_private_key: {{env: T_VAPID}},
     vapid_public_key: "{vapid_public}", subject: "mailto:ops@shop.example"}}
campaigns:
  - id: by-mail
    site: demo
    audience: carts
    steps: [{{destination: mail, subject: "Hi {{{{ traits.plan }}}}", text: "Come back"}}]
  - id: by-sms
    site: demo
    audience: carts
    steps: [{{destination: sms, text: "Your cart waits: {{{{ unsubscribe_url }}}}"}}]
  - id: by-bot
    site: demo
    audience: carts
    steps: [{{destination: bot, text: "Still thinking, {{{{ traits.plan }}}} member?"}}]
  - id: by-push
    site: demo
    audience: carts
    steps: [{{destination: push, subject: "Your cart", text: "2 items", url: "https://s.example/c"}}]
"""


@pytest.fixture
async def world(
    topics: Settings, store: ClickHouseStore, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Harness, FakeSmtp, FakeTwilio, FakeTelegram, FakePushService]]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        base64.urlsafe_b64encode(
            key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        .rstrip(b"=")
        .decode()
    )
    monkeypatch.setenv("T_TWILIO", TWILIO_TOKEN)
    monkeypatch.setenv("T_BOT", BOT_TOKEN)
    monkeypatch.setenv("T_VAPID", pem)
    twilio = FakeTwilio(SID, TWILIO_TOKEN)
    telegram = FakeTelegram(BOT_TOKEN)
    cipher = ContactCipher([ContactCipher.generate_key()])
    async with (
        smtp_server() as smtp,
        serve_app(twilio.app) as twilio_url,
        serve_app(telegram.app) as telegram_url,
        serve_push_service() as push,
        harness(topics, store, cipher=cipher, allow_private_targets=True) as h,
    ):
        push.now = h.clock.now  # the VAPID token's expiry is checked against the test's clock
        await h.apply_audiences(AUDIENCES)
        await h.apply_campaigns(campaigns(smtp, twilio_url, telegram_url, public))
        yield h, smtp, twilio, telegram, push
        twilio.release.set()


async def give_addresses(h: Harness, visitor: str, push: FakePushService, chat: int) -> Any:
    traits = protect_traits(
        {"email": f"{visitor}@example.com", "phone": "+14155550123", "plan": "gold"},
        h.cipher,
        default_region=None,
    )
    await ContactBook(h.store).save(
        "demo", {visitor: ContactUpdate("", "2027-01-15T08:00:00.000Z", traits)}, token=visitor
    )
    sub = push.subscribe()
    signals = [
        signal_event(
            site_id="demo",
            visitor_id=visitor,
            name="leadback.push_subscribed",
            properties={
                "endpoint_sha256": endpoint_sha256(sub.endpoint),
                "subscription_enc": h.cipher.encrypt(subscription_json(sub)),
            },
            now=h.clock.now(),
        ),
        signal_event(
            site_id="demo",
            visitor_id=visitor,
            name="leadback.telegram_linked",
            properties={"destination_id": "bot", "chat_enc": h.cipher.encrypt(str(chat))},
            now=h.clock.now(),
        ),
    ]
    await h.send(*signals)
    return sub


async def test_each_channel_reaches_the_person_once(
    world: tuple[Harness, FakeSmtp, FakeTwilio, FakeTelegram, FakePushService],
) -> None:
    h, smtp, twilio, telegram, push = world
    await give_addresses(h, "v1", push, chat=4242)
    await h.send(event("demo", "v1", "add_to_cart", h.clock.now()))
    await h.planned(1)
    await h.later(1)
    await h.settle()
    assert [m.rcpt_tos for m in smtp.messages] == [["v1@example.com"]]
    assert smtp.messages[0].message["Subject"] == "Hi gold"
    assert [(m["To"], m["From"]) for m in twilio.sent] == [("+14155550123", "+15005550006")]
    assert "/v1/unsubscribe/" in twilio.sent[0]["Body"]
    assert [(m["chat_id"], m["text"]) for m in telegram.sent] == [
        (4242, "Still thinking, gold member?")
    ]
    assert [{k: p.payload[k] for k in ("title", "body", "url")} for p in push.received] == [
        {"title": "Your cart", "body": "2 items", "url": "https://s.example/c"}
    ]
    for campaign in ("by-mail", "by-sms", "by-bot", "by-push"):
        assert (await h.statuses(campaign)) == {"sent": [("v1", 0)]}, campaign


async def test_stop_replies_blocked_bots_and_gone_subscriptions_are_remembered(
    world: tuple[Harness, FakeSmtp, FakeTwilio, FakeTelegram, FakePushService],
) -> None:
    h, smtp, twilio, telegram, push = world
    sub = await give_addresses(h, "v2", push, chat=777)
    twilio.unsubscribed.add("+14155550123")  # replied STOP: 21610
    telegram.blocked.add(777)  # 403 bot was blocked by the user
    push.drop(sub, 410)
    await h.send(event("demo", "v2", "add_to_cart", h.clock.now()))
    await h.planned(1)
    await h.later(1)
    await h.settle()
    assert len(smtp.messages) == 1  # e-mail still goes
    rows = await h.store.query(
        f"SELECT subject, channel, reason FROM {h.store.database}.suppressions FINAL "
        "WHERE active ORDER BY 1, 2"
    )
    assert [(str(s).split(":")[0], c, r) for s, c, r in rows] == [
        ("person", "sms", "unsubscribed"),
        ("phone", "sms", "unsubscribed"),
    ]
    chats = await h.store.query(
        f"SELECT argMax(active, at) FROM {h.store.database}.telegram_chats GROUP BY visitor_id"
    )
    assert [int(r[0]) for r in chats] == [0]
    subs = await h.store.query(
        f"SELECT argMax(active, at) FROM {h.store.database}.push_subscriptions "
        "GROUP BY endpoint_sha256"
    )
    assert [int(r[0]) for r in subs] == [0]
    statuses = {c: await h.statuses(c) for c in ("by-sms", "by-bot", "by-push")}
    assert all(s == {"failed": [("v2", 0)]} for s in statuses.values()), statuses
