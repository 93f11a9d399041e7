"""Per-partition batches of raw record bytes, and the replay rule that keeps writes exactly-once.

A batch covers a contiguous offset range of one partition. Its token names the range (and the
first record's timestamp, so a recreated topic reusing offsets gets new tokens). A handler that
records the range as an *intent* before writing can hand it back when the partition is read
again from the same offset: the batch is then rebuilt to exactly that range, so the retried
write carries the same token and a store that deduplicates by token drops it if it had landed.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import cast

from leadback.kafka.consumer import Records


@dataclass(frozen=True, slots=True)
class Intent:
    """A batch range recorded before its insert."""

    first_offset: int
    last_offset: int
    first_timestamp: int
    token: str


@dataclass
class PartitionBatch:
    """Records of one partition waiting to be inserted."""

    topic: str
    partition: int
    started: float  # monotonic time of the first record
    replay: Intent | None = None
    values: list[bytes] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)  # site_id:visitor_id of the events
    first_offset: int = -1
    last_offset: int = -1
    first_timestamp: int = 0
    size: int = 0
    count: int = 0
    past_range: bool = False  # a record beyond the replayed range was seen
    written: object = None  # what the handler's write made of it, for its settle

    def add(self, records: Records) -> Records:
        """Take records; return those beyond a replayed range (they start the next batch)."""
        replay = self.replay
        if (
            replay is not None
            and len(records)
            and not self.count
            and (
                records.offsets[0] != replay.first_offset
                or records.timestamps[0] != replay.first_timestamp
            )
        ):
            self.replay = None  # stale intent (topic recreated, or offsets moved): ignore
        take, rest = records, Records(records.partition)
        if self.replay is not None:
            take, rest = records.split(bisect_right(records.offsets, self.replay.last_offset))
            self.past_range = self.past_range or bool(len(rest))
        if not len(take):
            return rest
        if self.first_offset < 0:
            self.first_offset = take.offsets[0]
            self.first_timestamp = take.timestamps[0]
        self.last_offset = take.offsets[-1]
        self.values += take.values
        keys = cast("set[bytes | None]", self.keys)
        keys.update(take.keys)
        keys.discard(None)
        self.size += sum(map(len, take.values))
        self.count += len(take)
        return rest

    def release(self) -> None:
        """Drop the values once written (the range, count and keys stay)."""
        self.values = []

    @property
    def replay_complete(self) -> bool:
        return self.replay is not None and (
            self.past_range or self.last_offset >= self.replay.last_offset
        )

    @property
    def token(self) -> str:
        if self.replay is not None:
            return self.replay.token
        return (
            f"{self.topic}/{self.partition}/{self.first_offset}-{self.last_offset}"
            f"/{self.first_timestamp}"
        )

    def payload(self) -> bytes:
        """The JSONEachRow body: one event per line, bytes as they came from Kafka."""
        return b"\n".join(self.values)
