"""Per-partition batches of raw event bytes, and the replay rule that keeps inserts exactly-once.

A batch covers a contiguous offset range of one partition. Its deduplication token names the
range (and the first record's timestamp, so a recreated topic reusing offsets gets new tokens).
Before inserting, the segmenter records the range as an *intent*; a segmenter that later reads
the partition from the same offset finds the intent and rebuilds exactly that range, so the
retried insert carries the same token and ClickHouse drops it if it had landed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leadback.kafka.consumer import Message


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

    def add(self, messages: list[Message]) -> list[Message]:
        """Take messages; return those beyond a replayed range (they start the next batch)."""
        if self.replay is not None and messages and not self.values:
            head = messages[0]
            if head.offset != self.replay.first_offset or (
                head.timestamp != self.replay.first_timestamp
            ):
                self.replay = None  # stale intent (topic recreated, or offsets moved): ignore
        take = messages
        rest: list[Message] = []
        if self.replay is not None:
            limit = self.replay.last_offset
            cut = len(messages)
            for i, m in enumerate(messages):
                if m.offset > limit:
                    cut = i
                    break
            take, rest = messages[:cut], messages[cut:]
        for m in take:
            if self.first_offset < 0:
                self.first_offset = m.offset
                self.first_timestamp = m.timestamp
            self.last_offset = m.offset
            self.values.append(m.value)
            if m.key is not None:
                self.keys.add(m.key)
            self.size += len(m.value)
        return rest

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def replay_complete(self) -> bool:
        return self.replay is not None and self.last_offset >= self.replay.last_offset

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
