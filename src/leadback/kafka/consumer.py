"""A consumer-group member on one topic, on librdkafka (confluent-kafka): manual commits,
records handed out per partition as columns.

Why librdkafka and not aiokafka (the choice is drawn in :mod:`leadback.kafka.config`, which
also builds this consumer's properties): fetching, decompression and record parsing happen in
librdkafka's C threads, and a ``consume`` call returns up to thousands of records for about a
microsecond each, where aiokafka spends several microseconds of Python per record; the
segmenter's budget is a few microseconds per event, most of it ClickHouse's. librdkafka also
keeps heartbeating the group from its own thread while a round is being written.

The blocking calls (``consume``, ``commit``, ``close``) run on one dedicated thread, so the
event loop stays free; calls on the consumer never overlap. Rebalance callbacks fire on that
thread inside ``consume``; they are queued and handed to the loop's async callbacks, in order,
before the records of the same call, so a revocation is always seen before the records of a
new assignment. Errors are translated into Leadback errors; nothing else imports
confluent-kafka.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as _Message

from leadback.errors import BrokerUnavailableError, RetryableError
from leadback.kafka.config import common_options, rdkafka_consumer_config
from leadback.logs import get_logger
from leadback.settings import KafkaSettings

log = get_logger(__name__)

T = TypeVar("T")
PartitionsCallback = Callable[[set[int]], Awaitable[None]]

# Commit errors that mean "the group moved on": the partition's new owner replays the range.
_REBALANCED = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._STATE,
    }
)

# Method descriptors for map(): set on every record consume() returns without an error.
_offset = cast("Callable[[_Message], int]", _Message.offset)
_key = cast("Callable[[_Message], bytes | None]", _Message.key)
_value = cast("Callable[[_Message], bytes]", _Message.value)


class CommitFailed(RetryableError):
    """The group rebalanced before the commit; the partition's new owner replays the range."""


@dataclass(frozen=True, slots=True)
class Message:
    """One record (tests and tools; the segmenter takes :class:`Records`)."""

    partition: int
    offset: int
    timestamp: int  # ms, producer create time
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Records:
    """Consecutive records of one partition, as columns (index i is one record)."""

    partition: int
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)  # ms, producer create time
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def split(self, at: int) -> tuple[Records, Records]:
        """The first ``at`` records, and the rest."""
        if at >= len(self.offsets):
            return self, Records(self.partition)
        return (
            Records(
                self.partition,
                self.offsets[:at],
                self.timestamps[:at],
                self.keys[:at],
                self.values[:at],
            ),
            Records(
                self.partition,
                self.offsets[at:],
                self.timestamps[at:],
                self.keys[at:],
                self.values[at:],
            ),
        )

    @classmethod
    def of(cls, partition: int, messages: Sequence[Message]) -> Records:
        """Columns of ``messages`` (all of ``partition``)."""
        return cls(
            partition,
            [m.offset for m in messages],
            [m.timestamp for m in messages],
            [m.key for m in messages],
            [m.value for m in messages],
        )

    def messages(self) -> list[Message]:
        return [
            Message(self.partition, o, t, k, v)
            for o, t, k, v in zip(
                self.offsets, self.timestamps, self.keys, self.values, strict=True
            )
        ]


class GroupConsumer:
    """Member of ``group_id`` consuming ``topic`` with manual commits.

    ``options``: the connection options, :func:`leadback.kafka.config.common_options`; the
    librdkafka properties come from :func:`leadback.kafka.config.rdkafka_consumer_config`.
    """

    def __init__(
        self,
        topic: str,
        *,
        group_id: str,
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
        max_partition_fetch_bytes: int = 16 * 1024 * 1024,
        fetch_max_wait_ms: int = 100,
        session_timeout_ms: int = 6000,
        **options: Any,
    ) -> None:
        self.topic = topic
        self._config: dict[str, Any] = {
            **rdkafka_consumer_config(
                options,
                group_id=group_id,
                max_partition_fetch_bytes=max_partition_fetch_bytes,
                fetch_max_wait_ms=fetch_max_wait_ms,
                session_timeout_ms=session_timeout_ms,
            ),
            "error_cb": self._on_error,
            # librdkafka's own log lines through stdlib logging, not raw to stderr.
            "logger": logging.getLogger("leadback.kafka.consumer"),
        }
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._consumer: Consumer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._events: list[tuple[str, set[int]]] = []  # rebalance callbacks, in order
        self._assigned: set[int] = set()
        self._next: dict[int, int] = {}  # next offset to hand out, per partition

    # -- plumbing ---------------------------------------------------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _client(self) -> Consumer:
        if self._consumer is None:
            raise BrokerUnavailableError(f"consumer on {self.topic} is not started")
        return self._consumer

    def _on_error(self, error: KafkaError) -> None:
        # librdkafka retries connections itself; fatal errors surface on the next call.
        log.warning("kafka consumer error", error=str(error), fatal=error.fatal())

    def _assign_cb(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._events.append(("assigned", {tp.partition for tp in partitions}))

    def _revoke_cb(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._events.append(("revoked", {tp.partition for tp in partitions}))

    async def _deliver_events(self) -> None:
        events, self._events = self._events, []
        for kind, partitions in events:
            if kind == "assigned":
                self._assigned |= partitions
                await self._on_assigned(partitions)
            else:
                self._assigned -= partitions
                for p in partitions:
                    self._next.pop(p, None)
                await self._on_revoked(partitions)

    # -- the interface the loops use ----------------------------------------------------

    async def start(self) -> None:
        def start() -> None:
            consumer = Consumer(self._config)
            try:
                consumer.subscribe(
                    [self.topic],
                    on_assign=self._assign_cb,
                    on_revoke=self._revoke_cb,
                    on_lost=self._revoke_cb,
                )
            except KafkaException:
                consumer.close()
                raise
            self._consumer = consumer

        try:
            await self._call(start)
        except KafkaException as exc:
            raise BrokerUnavailableError(f"cannot start consumer on {self.topic}: {exc}") from exc

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[int, Records]:
        """Records fetched, by partition: up to ``max_records`` of those already here, else
        the first to arrive within ``timeout_ms`` and those with it (empty after ``timeout_ms``
        with none)."""
        consumer = self._client()
        limit = max(1, min(max_records, 1_000_000))

        def fetch() -> list[_Message]:
            # What is queued, at once; else wait for the first record and take what came with
            # it. consume(n, timeout) alone would wait the whole timeout for n records, holding
            # the first ones back (freshness).
            got = consumer.consume(limit, 0)
            if not got:
                got = consumer.consume(1, timeout_ms / 1000)
                if got and limit > 1:
                    got += consumer.consume(limit - 1, 0)
            return got

        try:
            fetched = await self._call(fetch)
        except KafkaException as exc:
            raise BrokerUnavailableError(f"fetch from {self.topic} failed: {exc}") from exc
        finally:
            await self._deliver_events()
        if any(map(_Message.error, fetched)):
            for m in fetched:
                error = m.error()
                if error is not None:
                    self._message_error(error)
            fetched = [m for m in fetched if m.error() is None]
        out: dict[int, Records] = {}
        # A fetch returns runs of one partition's records: columns are built per run by C
        # loops (map over method descriptors), not by a Python step per record.
        for p, run in itertools.groupby(fetched, _Message.partition):
            if p not in self._assigned:
                continue  # fetched before a revocation delivered in the same call
            group = list(run)
            records = Records(
                p,
                list(map(_offset, group)),
                [m.timestamp()[1] for m in group],
                list(map(_key, group)),
                list(map(_value, group)),
            )
            known = out.get(p)
            if known is None:
                out[p] = records
            else:
                known.offsets += records.offsets
                known.timestamps += records.timestamps
                known.keys += records.keys
                known.values += records.values
            self._next[p] = records.offsets[-1] + 1
        return out

    def _message_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise BrokerUnavailableError(f"fetch from {self.topic} failed: {error}")
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("kafka fetch error", topic=self.topic, error=str(error))

    async def commit(self, offsets: dict[int, int]) -> None:
        """Commit next-offsets-to-read per partition (synchronously acknowledged)."""
        consumer = self._client()
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            results = await self._call(lambda: consumer.commit(offsets=tps, asynchronous=False))
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.code() in _REBALANCED:
                raise CommitFailed(f"commit rejected: {exc}") from exc
            raise BrokerUnavailableError(f"commit failed: {exc}") from exc
        for tp in results or []:
            if tp.error is not None:
                if tp.error.code() in _REBALANCED:
                    raise CommitFailed(f"commit rejected: {tp.error}")
                raise BrokerUnavailableError(f"commit of partition {tp.partition}: {tp.error}")

    def assignment(self) -> set[int]:
        """Partitions this member owns, as last delivered to the loop."""
        return set(self._assigned)

    def lag(self) -> int:
        """Records known to be in the assigned partitions past what was handed out, from the
        high watermarks of the last fetches (no request; 0 when unknown). A lower bound: some
        brokers (tansu) report the last batch's base offset as the high watermark."""
        consumer = self._consumer
        if consumer is None:
            return 0
        total = 0
        for p in self._assigned:
            if p not in self._next:
                continue
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except (KafkaException, TypeError):
                continue
            if high >= 0:
                total += max(0, high - self._next[p])
        return total

    def pause(self, partitions: Iterable[int]) -> None:
        self._client().pause([TopicPartition(self.topic, p) for p in partitions])

    def resume(self, partitions: Iterable[int]) -> None:
        self._client().resume([TopicPartition(self.topic, p) for p in partitions])

    async def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        consumer = self._client()
        timeout = self._config.get("socket.timeout.ms", 30_000) / 1000

        def ends() -> dict[int, int]:
            return {
                p: int(consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout)[1])
                for p in partitions
            }

        try:
            return await self._call(ends)
        except (KafkaException, TypeError) as exc:
            raise BrokerUnavailableError(f"end offsets failed: {exc}") from exc

    async def position(self, partition: int) -> int:
        """The next offset this member will read from ``partition``."""
        if partition in self._next:
            return self._next[partition]
        consumer = self._client()
        tp = TopicPartition(self.topic, partition)
        try:
            committed = await self._call(lambda: consumer.committed([tp], timeout=10))
        except KafkaException as exc:
            raise BrokerUnavailableError(f"position failed: {exc}") from exc
        offset = committed[0].offset if committed else -1
        return max(0, int(offset))

    async def stop(self) -> None:
        """Leave the group and close the connections."""
        consumer, self._consumer = self._consumer, None
        try:
            if consumer is not None:
                await self._call(consumer.close)
        except (KafkaException, RuntimeError) as exc:
            raise BrokerUnavailableError(f"consumer stop failed: {exc}") from exc
        finally:
            self._executor.shutdown(wait=False)


def group_consumer_factory(
    kafka: KafkaSettings, topic: str, group_id: str, bootstrap: str, *, embedded: bool
) -> Callable[[PartitionsCallback, PartitionsCallback], GroupConsumer]:
    """What a stream loop builds its consumer with: a :class:`GroupConsumer` of ``group_id``
    on ``topic`` (``embedded``: the embedded broker, which allows a shorter session)."""

    def build(on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> GroupConsumer:
        return GroupConsumer(
            topic,
            group_id=group_id,
            on_assigned=on_assigned,
            on_revoked=on_revoked,
            session_timeout_ms=kafka.consumer_session_timeout_ms(embedded_broker=embedded),
            **common_options(kafka, bootstrap),
        )

    return build
