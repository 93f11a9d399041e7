"""Signals: what people tell a channel (unsubscribe, a push subscription, a Telegram link) as
canonical events on the events topic.

Ingest never writes ClickHouse; a signal travels like any event (topic -> segmenter -> the
``events`` table), and materialized views (``store/migrations/0003_dispatch.sql``) project it
into the table the dispatcher reads. A signal event has ``type`` ``custom``, ``source``
``signal`` (so consent lookups skip it) and one of these names:

===============================  ==============================================================
``leadback.suppressed``          properties ``subject`` (``person:<id>``, ``email:<sha256>``,
``leadback.unsuppressed``        ``phone:<sha256>``), ``channel`` (or ``all``), ``reason``
``leadback.push_subscribed``     ``endpoint_sha256``, ``subscription_enc`` (the subscription
``leadback.push_unsubscribed``   JSON, encrypted with the contact cipher)
``leadback.telegram_linked``     ``destination_id`` (the bot), ``chat_enc`` (the chat id,
``leadback.telegram_unlinked``   encrypted)
===============================  ==============================================================
"""

from __future__ import annotations

from typing import Any, Final, Literal

import orjson

from leadback import events as ev
from leadback.ids import uuid7
from leadback.kafka.delivery import Delivery

SIGNAL_SOURCE: Final = "signal"

SignalName = Literal[
    "leadback.suppressed",
    "leadback.unsuppressed",
    "leadback.push_subscribed",
    "leadback.push_unsubscribed",
    "leadback.telegram_linked",
    "leadback.telegram_unlinked",
]


def signal_event(
    *, site_id: str, visitor_id: str, name: SignalName, properties: dict[str, Any], now: float
) -> ev.CanonicalEvent:
    """The canonical event of one signal (keyed like the visitor's own events)."""
    event_id = uuid7(int(now * 1000))
    received_at = ev.format_ts(now)
    return {
        "schema_version": ev.SCHEMA_VERSION,
        "event_id": event_id,
        "site_id": site_id,
        "visitor_id": visitor_id,
        "type": "custom",
        "name": name,
        "sent_at": None,
        "received_at": received_at,
        "occurred_at": received_at,  # said to ingest just now
        "anonymous_id": None,
        "user_id": None,
        "traits": {},
        "url": None,
        "referrer": None,
        "utm": ev.empty_utm(),
        "click_ids": ev.empty_click_ids(),
        "properties": properties,
        "context": {"user_agent": None, "ip": "", "language": None},
        "consent": {
            "status": "denied",
            "purposes": [],
            "gpc": False,
            "dnt": False,
            "tracking": False,
        },
        "bot": False,
        "source": SIGNAL_SOURCE,
    }


def submit_signal(
    delivery: Delivery,
    topic: str,
    *,
    site_id: str,
    visitor_id: str,
    name: SignalName,
    properties: dict[str, Any],
    now: float,
) -> str:
    """Queue a signal on the events topic; returns its event id. Raises ``BackpressureError``
    when local buffers are full (answer 503, as for any event)."""
    event = signal_event(
        site_id=site_id, visitor_id=visitor_id, name=name, properties=properties, now=now
    )
    delivery.submit(topic, ev.event_key(site_id, visitor_id), orjson.dumps(event))
    return event["event_id"]
