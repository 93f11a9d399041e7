"""The segmenter's intents: each batch's offset range, recorded before its events are inserted.

A member that reads a partition again from an offset where an intent starts re-forms exactly
that range, so the retried insert carries the same deduplication token and ClickHouse drops it
if the first attempt had landed (see :mod:`leadback.stream.batches`).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from leadback.store.client import ClickHouseStore
from leadback.stream.batches import Intent, PartitionBatch


class IntentLog:
    """``segmenter_batches`` rows of one consumer group on one topic."""

    def __init__(self, store: ClickHouseStore, *, group_id: str, topic: str) -> None:
        self._store = store
        self._group_id = group_id
        self._topic = topic

    async def lookup(self, partition: int, offset: int) -> Intent | None:
        """The range recorded as starting at ``offset`` of ``partition``, if any."""
        rows = await self._store.query(
            f"SELECT last_offset, first_timestamp, token FROM {self._store.database}."
            "segmenter_batches FINAL WHERE consumer_group = {g:String} AND topic = {t:String}"
            " AND partition = {p:UInt32} AND first_offset = {o:UInt64} LIMIT 1",
            {"g": self._group_id, "t": self._topic, "p": partition, "o": offset},
        )
        if not rows:
            return None
        last, first_ts, token = rows[0]
        return Intent(offset, int(last), int(first_ts), str(token))

    async def record(self, batches: Sequence[PartitionBatch]) -> None:
        """Record the ranges about to be inserted, all partitions in one insert."""
        rows = b"\n".join(
            orjson.dumps(
                {
                    "consumer_group": self._group_id,
                    "topic": self._topic,
                    "partition": b.partition,
                    "first_offset": b.first_offset,
                    "last_offset": b.last_offset,
                    "first_timestamp": b.first_timestamp,
                    "records": b.count,
                    "token": b.token,
                }
            )
            for b in batches
        )
        token = "intent:" + "+".join(b.token for b in batches)
        await self._store.insert_json_rows("segmenter_batches", rows, dedup_token=token)
