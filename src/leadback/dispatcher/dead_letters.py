"""Deliveries that failed for good, on ``leadback.dispatch.dead.v1`` with the last response."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypedDict

import orjson

from leadback.events import format_ts
from leadback.kafka.producer import RecordProducer

SCHEMA_VERSION = 1


class DeadRecord(TypedDict):
    schema_version: int
    delivery_id: str
    site_id: str
    campaign_id: str
    person_id: str
    step: int
    channel: str
    destination_id: str
    reason: str
    detail: str
    http_status: int | None
    response: str
    attempts: int
    at: str


def dead_record(
    *,
    delivery_id: str,
    site_id: str,
    campaign_id: str,
    person_id: str,
    step: int,
    channel: str,
    destination_id: str,
    reason: str,
    detail: str,
    http_status: int | None,
    response: str,
    attempts: int,
    at_ms: int,
) -> DeadRecord:
    return {
        "schema_version": SCHEMA_VERSION,
        "delivery_id": delivery_id,
        "site_id": site_id,
        "campaign_id": campaign_id,
        "person_id": person_id,
        "step": step,
        "channel": channel,
        "destination_id": destination_id,
        "reason": reason,
        "detail": detail,
        "http_status": http_status,
        "response": response,
        "attempts": attempts,
        "at": format_ts(at_ms / 1000),
    }


class DeadLetters:
    """Publishes dead records and waits for the broker's acknowledgement."""

    def __init__(self, producer: RecordProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(self, records: Sequence[DeadRecord]) -> None:
        futures: list[asyncio.Future[Any]] = []
        for r in records:
            key = f"{r['site_id']}:{r['person_id']}".encode()
            futures.append(await self._producer.send(self._topic, key, orjson.dumps(r)))
        if futures:
            await asyncio.gather(*futures)
