"""What sends and exits teach the dispatcher, written where the next pass reads it:
suppressions (STOP replies, hard bounces, blocked bots, erasures), push subscriptions the push
service says are gone, Telegram chats that blocked the bot."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from leadback.events import format_ts
from leadback.store.client import ClickHouseStore, content_token


@dataclass(frozen=True, slots=True)
class Suppression:
    site_id: str
    subject: str  # person:<id> | email:<sha256> | phone:<sha256>
    channel: str  # a channel kind, or "all"
    reason: str


class FeedbackWriter:
    """Writes suppressions and dead addresses."""

    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store

    async def suppress(self, items: Iterable[Suppression], *, at_ms: int) -> None:
        at = format_ts(at_ms / 1000)
        body = b"\n".join(
            orjson.dumps(
                {
                    "site_id": s.site_id,
                    "subject": s.subject,
                    "channel": s.channel,
                    "reason": s.reason,
                    "active": 1,
                    "at": at,
                }
            )
            for s in items
        )
        if body:
            await self._store.insert_json_rows(
                "suppressions", body, dedup_token=content_token("suppressions", body)
            )

    async def push_gone(
        self, site: str, subscriptions: Iterable[tuple[str, str]], *, at_ms: int
    ) -> None:
        """Mark (visitor, endpoint sha256) subscriptions inactive."""
        at = format_ts(at_ms / 1000)
        body = b"\n".join(
            orjson.dumps(
                {
                    "site_id": site,
                    "visitor_id": visitor,
                    "endpoint_sha256": digest,
                    "subscription_enc": "",
                    "active": 0,
                    "at": at,
                }
            )
            for visitor, digest in subscriptions
        )
        if body:
            await self._store.insert_json_rows(
                "push_subscriptions", body, dedup_token=content_token("push_subscriptions", body)
            )

    async def chat_gone(self, site: str, chats: Iterable[tuple[str, str]], *, at_ms: int) -> None:
        """Mark (visitor, destination) Telegram links inactive."""
        at = format_ts(at_ms / 1000)
        body = b"\n".join(
            orjson.dumps(
                {
                    "site_id": site,
                    "visitor_id": visitor,
                    "destination_id": destination,
                    "chat_enc": "",
                    "active": 0,
                    "at": at,
                }
            )
            for visitor, destination in chats
        )
        if body:
            await self._store.insert_json_rows(
                "telegram_chats", body, dedup_token=content_token("telegram_chats", body)
            )
