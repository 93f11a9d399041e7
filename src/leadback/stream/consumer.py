"""What the stream loop needs from a consumer-group member, as a Protocol.

The implementation is :class:`leadback.kafka.consumer.GroupConsumer` (librdkafka); unit tests
drive the loop with a fake. Errors are Leadback's: ``BrokerUnavailableError`` when the broker
cannot be reached, ``CommitFailed`` when the group moved on before a commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from leadback.kafka.consumer import Records

PartitionsCallback = Callable[[set[int]], Awaitable[None]]


class Consumer(Protocol):
    """One member of a consumer group on one topic, with manual commits.

    Rebalance callbacks (given to the factory) run inside :meth:`getmany`, before the records
    of the same call: a revocation is seen before the records of a new assignment.
    """

    async def start(self) -> None: ...

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[int, Records]:
        """Up to ``max_records`` records by partition; empty after ``timeout_ms`` with none."""
        ...

    async def commit(self, offsets: dict[int, int]) -> None:
        """Commit next-offsets-to-read per partition."""
        ...

    def assignment(self) -> set[int]: ...

    def lag(self) -> int:
        """Records known to wait past what was handed out (a lower bound; 0 when unknown)."""
        ...

    def pause(self, partitions: Iterable[int]) -> None: ...

    def resume(self, partitions: Iterable[int]) -> None: ...

    async def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]: ...

    async def position(self, partition: int) -> int: ...

    async def stop(self) -> None:
        """Leave the group."""
        ...


ConsumerFactory = Callable[[PartitionsCallback, PartitionsCallback], Consumer]
"""Builds the member, given its ``on_assigned`` and ``on_revoked`` callbacks."""
