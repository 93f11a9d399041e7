"""Stream batches: ranges, tokens and exact replay of an intended range."""

from __future__ import annotations

from leadback.kafka.consumer import Message, Records
from leadback.stream.batches import Intent, PartitionBatch


def msgs(first: int, last: int, ts: int = 1000) -> Records:
    return Records.of(
        0,
        [Message(0, o, ts + o, b"k%d" % (o % 3), b'{"o":%d}' % o) for o in range(first, last + 1)],
    )


def test_batch_covers_a_contiguous_range_and_names_it_in_the_token() -> None:
    b = PartitionBatch("events", 0, started=0.0)
    assert not len(b.add(msgs(10, 14)))
    assert not len(b.add(msgs(15, 19)))
    assert (b.first_offset, b.last_offset, b.count) == (10, 19, 10)
    assert b.token == "events/0/10-19/1010"
    assert b.payload().count(b"\n") == 9
    assert b.keys == {b"k0", b"k1", b"k2"}
    assert b.size == len(b.payload()) - 9
    assert b.values == [b'{"o":%d}' % o for o in range(10, 20)]
    b.release()
    assert (b.values, b.count, b.last_offset) == ([], 10, 19)


def test_replay_takes_exactly_the_intended_range_and_returns_the_rest() -> None:
    intent = Intent(first_offset=10, last_offset=14, first_timestamp=1010, token="tok")
    b = PartitionBatch("events", 0, started=0.0, replay=intent)
    rest = b.add(msgs(10, 12))
    assert not len(rest)
    assert not b.replay_complete
    rest = b.add(msgs(13, 20))
    assert rest.offsets == [15, 16, 17, 18, 19, 20]
    assert [m.value for m in rest.messages()] == [b'{"o":%d}' % o for o in range(15, 21)]
    assert b.replay_complete
    assert b.token == "tok"
    assert (b.first_offset, b.last_offset) == (10, 14)


def test_stale_intent_from_a_recreated_topic_is_ignored() -> None:
    intent = Intent(first_offset=0, last_offset=4, first_timestamp=5, token="old")
    b = PartitionBatch("events", 0, started=0.0, replay=intent)
    rest = b.add(msgs(0, 9, ts=99_000))  # same offsets, other timestamps: not the same data
    assert not len(rest)
    assert b.replay is None
    assert b.token == "events/0/0-9/99000"


def test_records_without_keys_leave_no_none_key() -> None:
    b = PartitionBatch("events", 0, started=0.0)
    b.add(Records.of(0, [Message(0, 1, 5, None, b"{}"), Message(0, 2, 6, b"k", b"{}")]))
    assert b.keys == {b"k"}


def test_replay_cut_with_gaps_in_offsets() -> None:
    # Compaction or transaction markers leave gaps: the cut is by offset, not by position.
    intent = Intent(first_offset=10, last_offset=14, first_timestamp=7, token="tok")
    b = PartitionBatch("events", 0, started=0.0, replay=intent)
    records = Records(0, [10, 12, 15, 16], [7, 8, 9, 10], [None] * 4, [b"{}"] * 4)
    rest = b.add(records)
    assert rest.offsets == [15, 16]
    assert b.replay_complete  # 14 is gone (compacted): 15 came, so the range is whole
    assert (b.first_offset, b.last_offset, b.count) == (10, 12, 2)


def test_values_come_back_one_by_one_even_with_newlines_inside() -> None:
    # A garbage record may hold a newline; the refused-batch path needs each record as it was.
    values = [b"{not json\n}", b"", b'{"a":1}', b"\n", b"x"]
    b = PartitionBatch("events", 0, started=0.0)
    b.add(Records.of(0, [Message(0, i, 5, None, v) for i, v in enumerate(values[:2])]))
    b.add(Records.of(0, [Message(0, i + 2, 5, None, v) for i, v in enumerate(values[2:])]))
    assert b.values == values
    assert b.payload() == b"\n".join(values)
    assert b.size == sum(map(len, values))
