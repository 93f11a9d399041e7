"""Segmenter batches: ranges, tokens and exact replay of an intended range."""

from __future__ import annotations

from leadback.kafka.consumer import Message
from leadback.segmenter.batches import Intent, PartitionBatch


def msgs(first: int, last: int, ts: int = 1000) -> list[Message]:
    return [Message(0, o, ts + o, None, b'{"o":%d}' % o) for o in range(first, last + 1)]


def test_batch_covers_a_contiguous_range_and_names_it_in_the_token() -> None:
    b = PartitionBatch("events", 0, started=0.0)
    assert b.add(msgs(10, 14)) == []
    assert b.add(msgs(15, 19)) == []
    assert (b.first_offset, b.last_offset, b.count) == (10, 19, 10)
    assert b.token == "events/0/10-19/1010"
    assert b.payload().count(b"\n") == 9


def test_replay_takes_exactly_the_intended_range_and_returns_the_rest() -> None:
    intent = Intent(first_offset=10, last_offset=14, first_timestamp=1010, token="tok")
    b = PartitionBatch("events", 0, started=0.0, replay=intent)
    rest = b.add(msgs(10, 12))
    assert rest == []
    assert not b.replay_complete
    rest = b.add(msgs(13, 20))
    assert [m.offset for m in rest] == [15, 16, 17, 18, 19, 20]
    assert b.replay_complete
    assert b.token == "tok"
    assert (b.first_offset, b.last_offset) == (10, 14)


def test_stale_intent_from_a_recreated_topic_is_ignored() -> None:
    intent = Intent(first_offset=0, last_offset=4, first_timestamp=5, token="old")
    b = PartitionBatch("events", 0, started=0.0, replay=intent)
    rest = b.add(msgs(0, 9, ts=99_000))  # same offsets, other timestamps: not the same data
    assert rest == []
    assert b.replay is None
    assert b.token == "events/0/0-9/99000"
