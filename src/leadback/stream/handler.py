"""What a service plugs into the stream loop: its round handler, and the knobs the loop reads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from leadback.stream.batches import Intent, PartitionBatch

T = TypeVar("T")


class PartitionLost(Exception):
    """The partition was revoked while its batch waited for the store: abandon the batch."""


class LoopSettings(Protocol):
    """The knobs the loop reads (``SegmenterSettings`` has them all)."""

    @property
    def batch_max_events(self) -> int: ...
    @property
    def batch_max_bytes(self) -> int: ...
    @property
    def buffer_max_bytes(self) -> int: ...
    @property
    def flush_interval_ms(self) -> int: ...
    @property
    def fetch_max_records(self) -> int: ...
    @property
    def catchup_commit_s(self) -> float: ...
    @property
    def catchup_commit_events(self) -> int: ...
    @property
    def retry_initial_s(self) -> float: ...
    @property
    def retry_max_s(self) -> float: ...
    @property
    def drain_on_shutdown(self) -> bool: ...
    @property
    def shutdown_timeout_s(self) -> float: ...


class Retrying(Protocol):
    """:meth:`StreamLoop.retrying`, as handed to the handler."""

    async def __call__(
        self, what: str, call: Callable[[], Awaitable[T]], *, partition: int | None = None
    ) -> T: ...


class RoundHandler(Protocol):
    """What a service does with the loop's batches."""

    async def recall(self, partition: int, offset: int, retrying: Retrying) -> Intent | None:
        """A range planned earlier from ``offset`` (replay it exactly), or None."""
        ...

    async def write(
        self, batches: Sequence[PartitionBatch], retrying: Retrying
    ) -> list[PartitionBatch]:
        """Make the batches durable; return those written (not those whose partition was
        lost, see :class:`PartitionLost`). Values may be released once written."""
        ...

    async def settle(self, batches: Sequence[PartitionBatch], retrying: Retrying) -> None:
        """Runs once for written batches about to be committed together."""
        ...
