"""The segmenter's round handler: event batches into ClickHouse exactly once, then audiences.

Exactly once: a batch's range is recorded (intent) before its insert, and the insert carries a
deduplication token named after the range; offsets are committed by the stream loop only after
:meth:`EventWriter.settle`. A crash anywhere in between makes the next owner of the partition
re-form the same range from the intent and retry with the same token, which ClickHouse drops if
the first attempt had landed. A batch ClickHouse rejects as malformed goes through the
:class:`~leadback.segmenter.quarantine.Quarantine`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from leadback import failpoints
from leadback.audiences.digest import BatchDigest
from leadback.errors import PermanentError, StoreRejectedError
from leadback.logs import get_logger
from leadback.segmenter.intents import IntentLog
from leadback.segmenter.quarantine import Quarantine
from leadback.store.client import ClickHouseStore
from leadback.stream.batches import Intent, PartitionBatch
from leadback.stream.handler import PartitionLost, Retrying

log = get_logger(__name__)


class BatchObserver(Protocol):
    """Runs after batches are in ClickHouse and before their offsets are committed (audiences):
    ``digest`` once per inserted body, ``on_round`` once for the batches committed together."""

    def digest(self, body: bytes) -> BatchDigest: ...

    async def on_round(
        self, keys: Iterable[bytes], digests: Sequence[BatchDigest], token: str
    ) -> None: ...


class EventWriter:
    """:class:`~leadback.stream.loop.RoundHandler` of the segmenter."""

    def __init__(
        self,
        store: ClickHouseStore,
        intents: IntentLog,
        quarantine: Quarantine,
        *,
        insert_settings: dict[str, str | int],
        observer: BatchObserver | None = None,
    ) -> None:
        self._store = store
        self._intents = intents
        self._quarantine = quarantine
        self._insert_settings = insert_settings
        self.observer = observer
        self.observer_failures = 0

    @property
    def events_quarantined(self) -> int:
        return self._quarantine.quarantined

    async def recall(self, partition: int, offset: int, retrying: Retrying) -> Intent | None:
        """The intent recorded from ``offset``: that range is re-formed and inserted again."""
        return await retrying("intent lookup", lambda: self._intents.lookup(partition, offset))

    async def write(
        self, batches: Sequence[PartitionBatch], retrying: Retrying
    ) -> list[PartitionBatch]:
        """Intents of the new ranges (one insert), then each batch's events."""
        fresh = [b for b in batches if b.replay is None]
        if fresh:
            await retrying("intent insert", lambda: self._intents.record(fresh))
        inserted = []
        for batch in batches:
            try:
                await self._insert(batch, retrying)
            except PartitionLost:
                log.warning(
                    "partition revoked during retries; batch left to its new owner",
                    partition=batch.partition,
                    token=batch.token,
                )
                continue
            inserted.append(batch)
        return inserted

    async def _insert(self, batch: PartitionBatch, retrying: Retrying) -> None:
        token = batch.token
        body = batch.payload()
        try:
            await retrying(
                "events insert",
                lambda: self._store.insert_json_rows(
                    "events", body, dedup_token=token, settings=self._insert_settings
                ),
                partition=batch.partition,
            )
        except StoreRejectedError as exc:
            log.error("batch rejected; checking rows one by one", token=token, error=str(exc))
            body = await self._quarantine.insert_valid(batch, batch.values, retrying)
        if self.observer is not None:
            batch.written = self.observer.digest(body)
        batch.release()

    async def settle(self, batches: Sequence[PartitionBatch], retrying: Retrying) -> None:
        """The audience evaluation of the batches committed together (one round)."""
        observer = self.observer
        if observer is None:
            return
        keys: set[bytes] = set().union(*(b.keys for b in batches))
        digests = [b.written for b in batches if isinstance(b.written, BatchDigest)]
        token = round_token([b.token for b in batches])
        try:
            await retrying("audience evaluation", lambda: observer.on_round(keys, digests, token))
        except PermanentError as exc:
            # A statement the engine refuses will not pass on retry; the events are stored
            # and the next batch or timer pass of these persons evaluates them again.
            self.observer_failures += 1
            log.error("audience evaluation failed", token=token, error=str(exc))
        failpoints.hit("segmenter.after_evaluation")


def round_token(tokens: Sequence[str]) -> str:
    """One name for batches evaluated together: their tokens, or a digest of many."""
    ordered = sorted(tokens)
    if len(ordered) <= 4:
        return "+".join(ordered)
    digest = hashlib.sha256("+".join(ordered).encode()).hexdigest()[:32]
    return f"{ordered[0]}+{len(ordered) - 1}:{digest}"
