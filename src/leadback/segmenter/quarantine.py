"""Rows ClickHouse refuses: the ones that are not canonical events go to the invalid topic with
a reason, the rest is inserted; nothing read from the events topic is dropped unseen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import orjson

from leadback.clock import Clock
from leadback.errors import StoreRejectedError
from leadback.invalid import kafka_record, rejected_event_record
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore
from leadback.stream.batches import PartitionBatch
from leadback.stream.handler import Retrying

log = get_logger(__name__)

REQUIRED_KEYS = ("event_id", "site_id", "visitor_id", "type", "received_at")
InvalidSink = Callable[[bytes | None, bytes], Awaitable[None]]


class Quarantine:
    """Splits a rejected batch into invalid records and an insert of the rest."""

    def __init__(
        self,
        store: ClickHouseStore,
        invalid_sink: InvalidSink,
        *,
        clock: Clock,
        insert_settings: dict[str, str | int],
    ) -> None:
        self._store = store
        self._invalid_sink = invalid_sink
        self._clock = clock
        self._insert_settings = insert_settings
        self.quarantined = 0

    async def insert_valid(
        self, batch: PartitionBatch, values: Sequence[bytes], retrying: Retrying
    ) -> bytes:
        """Send the rows that are not canonical events to the invalid topic and insert the
        rest (token ``<batch token>/filtered``); return the body inserted."""
        token = batch.token
        good: list[bytes] = []
        for value in values:
            reason = invalid_reason(value)
            if reason is None:
                good.append(value)
            else:
                await self._send(reason, value)
                self.quarantined += 1
        if not good:
            return b""
        body = b"\n".join(good)
        try:
            await retrying(
                "filtered insert",
                lambda: self._store.insert_json_rows(
                    "events",
                    body,
                    dedup_token=f"{token}/filtered",
                    settings=self._insert_settings,
                ),
                partition=batch.partition,
            )
        except StoreRejectedError as exc:
            # Every row looks canonical yet the engine refuses them: keep them visible.
            log.error("filtered batch still rejected", token=token, error=str(exc))
            for value in good:
                await self._send("store_rejected", value, str(exc))
            self.quarantined += len(good)
            return b""
        return body

    async def _send(self, reason: str, value: bytes, detail: str = "") -> None:
        key, record = kafka_record(rejected_event_record(reason, value, detail, self._clock.now()))
        await self._invalid_sink(key, record)


def invalid_reason(value: bytes) -> str | None:
    """Why a value from the events topic is not a canonical event, or None if it is one."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not_json"
    if not isinstance(obj, dict):
        return "not_an_object"
    for key in REQUIRED_KEYS:
        if not isinstance(obj.get(key), str) or not obj[key]:
            return f"missing_{key}"
    return None
