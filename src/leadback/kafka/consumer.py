"""A consumer-group member on one topic, on aiokafka: batches by partition, manual commits.

Translates aiokafka errors into Leadback errors and hides aiokafka types behind small ones, so
the segmenter (and later the dispatcher) loops import nothing from aiokafka.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from leadback.errors import BrokerUnavailableError, RetryableError

PartitionsCallback = Callable[[set[int]], Awaitable[None]]


class CommitFailed(RetryableError):
    """The group rebalanced before the commit; the partition's new owner replays the range."""


@dataclass(frozen=True, slots=True)
class Message:
    """One record as the loops see it."""

    partition: int
    offset: int
    timestamp: int  # ms, producer create time
    key: bytes | None
    value: bytes


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._on_assigned({tp.partition for tp in assigned})


class GroupConsumer:
    """Member of ``group_id`` consuming ``topic`` with manual commits."""

    def __init__(
        self,
        topic: str,
        *,
        group_id: str,
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
        max_partition_fetch_bytes: int = 16 * 1024 * 1024,
        fetch_max_wait_ms: int = 100,
        **options: Any,
    ) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            # Short: the broker may hold an empty fetch this long, which is added to freshness.
            fetch_max_wait_ms=fetch_max_wait_ms,
            fetch_max_bytes=max(max_partition_fetch_bytes, 64 * 1024 * 1024),
            **options,
        )
        self._listener = _Listener(on_assigned, on_revoked)

    async def start(self) -> None:
        try:
            await self._consumer.start()
            self._consumer.subscribe([self.topic], listener=self._listener)
        except KafkaError as exc:
            await self._consumer.stop()
            raise BrokerUnavailableError(f"cannot start consumer on {self.topic}: {exc}") from exc

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[int, list[Message]]:
        """Records fetched so far, by partition (empty after ``timeout_ms`` with none)."""
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"fetch from {self.topic} failed: {exc}") from exc
        return {
            tp.partition: [
                Message(tp.partition, r.offset, r.timestamp, r.key, r.value) for r in records
            ]
            for tp, records in batches.items()
        }

    async def commit(self, offsets: dict[int, int]) -> None:
        """Commit next-offsets-to-read per partition."""
        try:
            await self._consumer.commit(
                {TopicPartition(self.topic, p): o for p, o in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitFailed(f"commit rejected: {exc}") from exc
        except KafkaError as exc:
            raise BrokerUnavailableError(f"commit failed: {exc}") from exc

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == self.topic}

    def pause(self, partitions: Iterable[int]) -> None:
        self._consumer.pause(*[TopicPartition(self.topic, p) for p in partitions])

    def resume(self, partitions: Iterable[int]) -> None:
        self._consumer.resume(*[TopicPartition(self.topic, p) for p in partitions])

    async def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        try:
            ends = await self._consumer.end_offsets(tps)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"end offsets failed: {exc}") from exc
        return {tp.partition: int(o) for tp, o in ends.items()}

    async def position(self, partition: int) -> int:
        try:
            pos: int = await self._consumer.position(TopicPartition(self.topic, partition))
        except (KafkaError, IllegalStateError) as exc:
            raise BrokerUnavailableError(f"position failed: {exc}") from exc
        return pos

    async def stop(self) -> None:
        try:
            await self._consumer.stop()
        except KafkaError as exc:
            raise BrokerUnavailableError(f"consumer stop failed: {exc}") from exc
