"""Publish audience changes to Kafka and wait for the broker's acknowledgement."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from leadback.audiences.changes import ChangeRecord, encode
from leadback.errors import BrokerUnavailableError
from leadback.kafka.producer import RecordProducer


class KafkaChangePublisher:
    """:class:`~leadback.audiences.changes.ChangePublisher` on a Leadback record producer."""

    def __init__(self, producer: RecordProducer, topic: str, *, timeout_s: float = 30.0) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s

    async def publish(self, records: Sequence[ChangeRecord]) -> None:
        """Send every record; raise ``BrokerUnavailableError`` unless all were acknowledged."""
        futures = []
        for record in records:
            key, value = encode(record)
            futures.append(await self._producer.send(self._topic, key, value))
        if not futures:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.gather(*futures)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"{len(futures)} audience changes not acknowledged in {self._timeout_s}s"
            ) from exc
