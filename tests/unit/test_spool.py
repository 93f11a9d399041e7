"""Disk spool: FIFO replay, acks, bounds, restarts, torn writes, slots shared by processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadback.errors import BackpressureError
from leadback.kafka.spool import Spool
from leadback.kafka.spool_frames import SpoolRecord

BIG = 1 << 30


def make_records(n: int, *, start: int = 0) -> list[SpoolRecord]:
    """Mixed keys (None and bytes) and values (some empty)."""
    out: list[SpoolRecord] = []
    for i in range(start, start + n):
        key = None if i % 3 == 0 else b"k%d" % i
        value = b"" if i % 5 == 0 else b"value-%d-" % i + b"x" * (i % 17)
        out.append((f"topic-{i % 2}", key, value))
    return out


def frame_size(record: SpoolRecord) -> int:
    topic, key, value = record
    return 14 + len(topic.encode()) + len(key or b"") + len(value)


def segments(spool: Spool) -> list[Path]:
    return sorted(spool.directory.glob("*.seg"))


def segments_in(base: Path) -> list[Path]:
    return sorted(base.glob("slot-*/*.seg"))


def drain(spool: Spool, batch: int = 7) -> list[SpoolRecord]:
    got: list[SpoolRecord] = []
    while True:
        cursor, records = spool.read(batch)
        if not records:
            return got
        spool.ack(cursor)
        got.extend(records)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spool(base: Path) -> Iterator[Spool]:
    s = Spool.open(base, max_bytes=BIG, segment_bytes=128)
    yield s
    s.close()


def test_fifo_order_across_many_segments(spool: Spool) -> None:
    records = make_records(50)
    spool.append(records[:1])
    spool.append(records[1:30])
    spool.append(records[30:])
    assert len(segments(spool)) > 5
    assert spool.pending_records == 50
    assert spool.size_bytes == sum(frame_size(r) for r in records)
    assert drain(spool) == records
    assert spool.is_empty
    assert spool.size_bytes == 0


def test_a_record_larger_than_a_segment_gets_its_own_segment(spool: Spool) -> None:
    records: list[SpoolRecord] = [("t", None, b"a"), ("t", b"k", b"x" * 1000), ("t", None, b"b")]
    spool.append(records)
    assert len(segments(spool)) == 3
    assert drain(spool, batch=1) == records


def test_read_without_ack_repeats_and_ack_deletes_delivered_segments(spool: Spool) -> None:
    records = make_records(40)
    spool.append(records)
    first = segments(spool)
    _, again1 = spool.read(10)
    cursor, again2 = spool.read(10)
    assert again1 == again2 == records[:10]
    assert spool.pending_records == 40

    spool.ack(cursor)
    assert spool.pending_records == 30
    assert spool.size_bytes == sum(frame_size(r) for r in records[10:])
    _, rest = spool.read(100)
    assert rest == records[10:]
    # Segments whose records were all acked are gone; the rest are still there.
    remaining = segments(spool)
    assert first[0] not in remaining
    assert remaining == first[len(first) - len(remaining) :]

    cursor, _ = spool.read(100)
    spool.ack(cursor)
    assert spool.is_empty
    assert len(segments(spool)) <= 1  # at most the tail, still open for appends
    spool.ack(cursor)  # a stale cursor is harmless
    assert spool.read(10) == (cursor, [])


def test_read_respects_the_byte_budget_but_returns_at_least_one(spool: Spool) -> None:
    records = make_records(20)
    spool.append(records)
    _, one = spool.read(100, max_bytes=1)
    assert one == records[:1]
    budget = sum(frame_size(r) for r in records[:5])
    _, five = spool.read(100, max_bytes=budget)
    assert five == records[:5]


def test_full_spool_raises_backpressure_and_writes_nothing(base: Path) -> None:
    records = make_records(10)
    limit = sum(frame_size(r) for r in records)
    spool = Spool.open(base, max_bytes=limit, segment_bytes=100)
    try:
        spool.append(records[:6])
        on_disk = {p: p.stat().st_size for p in segments(spool)}
        with pytest.raises(BackpressureError) as info:
            spool.append([*records[6:], ("t", None, b"one byte too many")])
        assert info.value.retry_after == 1.0
        assert spool.pending_records == 6
        assert {p: p.stat().st_size for p in segments(spool)} == on_disk

        spool.append(records[6:])  # exactly full is allowed
        with pytest.raises(BackpressureError):
            spool.append([("t", None, b"")])
        cursor, _ = spool.read(3)
        spool.ack(cursor)
        spool.append(records[:3])  # acking made room
        assert drain(spool) == records[3:] + records[:3]
    finally:
        spool.close()


def test_reopen_after_close_replays_only_unacked_records(base: Path) -> None:
    records = make_records(30)
    spool = Spool.open(base, max_bytes=BIG, segment_bytes=200)
    spool.append(records)
    cursor, _ = spool.read(13)
    spool.ack(cursor)  # in the middle of a segment: needs head.pos
    slot = spool.directory
    spool.close()

    spool = Spool.open(base, max_bytes=BIG, segment_bytes=200)
    try:
        assert spool.directory == slot
        assert spool.pending_records == 17
        assert spool.size_bytes == sum(frame_size(r) for r in records[13:])
        more = make_records(5, start=100)
        spool.append(more)
        assert drain(spool) == records[13:] + more
    finally:
        spool.close()


def test_closing_an_empty_spool_removes_its_slot(base: Path) -> None:
    spool = Spool.open(base, max_bytes=BIG, segment_bytes=200)
    spool.append(make_records(5))
    drain(spool)
    slot = spool.directory
    spool.close()
    spool.close()  # idempotent
    assert not slot.exists()
    with pytest.raises(RuntimeError):
        spool.append(make_records(1))


def test_torn_write_at_the_end_is_truncated_on_recovery(base: Path) -> None:
    records = make_records(25)
    spool = Spool.open(base, max_bytes=BIG, segment_bytes=600)
    spool.append(records)
    last = segments(spool)[-1]
    spool.close()
    assert len(segments_in(base)) > 1
    assert last.stat().st_size > 2 * frame_size(records[-1])  # complete records before the tear

    # Crash mid-write: half of the last record made it, then whatever the disk had.
    with last.open("r+b") as f:
        f.truncate(last.stat().st_size - frame_size(records[-1]) // 2)
    with last.open("ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 9 + b"\x00" * 20)

    spool = Spool.open(base, max_bytes=BIG, segment_bytes=600)
    try:
        assert spool.pending_records == 24
        more = make_records(3, start=500)
        spool.append(more)  # goes after the cut, so it must be readable too
        assert drain(spool) == records[:-1] + more
    finally:
        spool.close()


def test_corruption_inside_an_older_segment_skips_only_its_rest(base: Path) -> None:
    records: list[SpoolRecord] = [("t", None, b"%03d" % i) for i in range(12)]
    size = frame_size(records[0])
    spool = Spool.open(base, max_bytes=BIG, segment_bytes=4 * size)
    spool.append(records)
    first = segments(spool)[0]
    spool.close()

    with first.open("r+b") as f:  # flip a value byte of the second record
        f.seek(2 * size - 1)
        byte = f.read(1)
        f.seek(2 * size - 1)
        f.write(bytes([byte[0] ^ 0xFF]))

    spool = Spool.open(base, max_bytes=BIG, segment_bytes=4 * size)
    try:
        assert drain(spool) == records[:1] + records[4:]
    finally:
        spool.close()


def test_corruption_found_while_reading_skips_only_that_segments_rest(base: Path) -> None:
    records: list[SpoolRecord] = [("t", b"k", b"%03d" % i) for i in range(12)]
    size = frame_size(records[0])
    spool = Spool.open(base, max_bytes=BIG, segment_bytes=4 * size)
    try:
        spool.append(records)
        with segments(spool)[1].open("r+b") as f:  # damage the third record of segment 2
            f.seek(2 * size + 3)
            f.write(b"\xff\xff")
        cursor, got = spool.read(100)
        assert got == records[:6] + records[8:]
        assert spool.pending_records == 10  # the two unreadable records are no longer counted
        spool.ack(cursor)
        assert spool.is_empty
    finally:
        spool.close()


def test_live_spools_get_separate_slots_and_a_closed_one_is_adopted(base: Path) -> None:
    a = Spool.open(base, max_bytes=BIG, segment_bytes=200)
    b = Spool.open(base, max_bytes=BIG, segment_bytes=200)
    try:
        assert a.directory != b.directory
        records = make_records(10)
        a.append(records)
        a.close()
        c = Spool.open(base, max_bytes=BIG, segment_bytes=200)
        try:
            assert c.directory == a.directory
            assert drain(c) == records
        finally:
            c.close()
        assert b.is_empty
    finally:
        a.close()
        b.close()


CHILD = """
import os, signal, sys
from pathlib import Path
from leadback.kafka.spool import Spool
spool = Spool.open(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=4096)
for i in range(1000):
    spool.append([("events", None if i % 2 else b"k%d" % i, b"v%d" % i)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_records_survive_a_process_killed_with_sigkill(base: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(base)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()

    spool = Spool.open(base, max_bytes=BIG, segment_bytes=4096)
    try:
        expected = [("events", None if i % 2 else b"k%d" % i, b"v%d" % i) for i in range(1000)]
        assert spool.pending_records == 1000
        assert drain(spool, batch=333) == expected
    finally:
        spool.close()


record_strategy = st.tuples(
    st.sampled_from(["a", "events", "ünï"]),
    st.one_of(st.none(), st.binary(max_size=16)),
    st.binary(max_size=3000),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(record_strategy, max_size=60), data=st.data())
def test_any_append_read_ack_interleaving_yields_the_appended_sequence(
    records: list[SpoolRecord], data: st.DataObject
) -> None:
    segment_bytes = data.draw(st.integers(64, 8192), label="segment_bytes")
    reopen_after = data.draw(st.integers(0, len(records)), label="reopen_after")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        spool = Spool.open(base, max_bytes=BIG, segment_bytes=segment_bytes)
        try:
            appended = 0
            got: list[SpoolRecord] = []
            reopened = False
            while len(got) < len(records):
                if not reopened and len(got) >= reopen_after:
                    spool.close()
                    spool = Spool.open(base, max_bytes=BIG, segment_bytes=segment_bytes)
                    reopened = True
                pending = appended - len(got)
                if appended < len(records) and (
                    pending == 0 or data.draw(st.booleans(), label="append")
                ):
                    n = data.draw(st.integers(1, 10), label="chunk")
                    spool.append(records[appended : appended + n])
                    appended = min(appended + n, len(records))
                    continue
                n = data.draw(st.integers(1, 12), label="read")
                budget = data.draw(st.integers(1, 20_000), label="read_bytes")
                cursor, batch = spool.read(n, max_bytes=budget)
                # As many as max_records, pending and the byte budget allow, but at least one.
                want = min(n, pending)
                while want > 1 and sum(map(frame_size, records[len(got) :][:want])) > budget:
                    want -= 1
                assert batch == records[len(got) : len(got) + want]
                if data.draw(st.booleans(), label="ack"):
                    spool.ack(cursor)
                    got.extend(batch)
            assert got == records
            assert spool.is_empty
            assert spool.size_bytes == 0
            assert spool.read(5)[1] == []
        finally:
            spool.close()
