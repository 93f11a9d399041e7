"""Delivery: the request path never blocks, and a failing broker loses nothing (fake producer).

The same behaviour against the real broker is proven in tests/integration/test_broker_outage.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from leadback.errors import BackpressureError, ConfigError, QueueFullError
from leadback.kafka.delivery import Delivery
from leadback.kafka.rdkafka import FailureCallback
from leadback.kafka.spool import Spool


class FakeProducer:
    """Models librdkafka: a bounded client queue; poll() acks it while ``up``, and fails
    every queued record (as after message.timeout.ms) while down."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.up = True
        self.capacity = capacity
        self.queued: list[tuple[str, bytes | None, bytes, FailureCallback | None]] = []
        self.sent: list[bytes] = []
        self.on_failure: FailureCallback | None = None
        self.closed = False
        self.refused: str | None = None  # as after a fatal refusal of the producer's config

    def start(self, on_failure: FailureCallback) -> None:
        self.on_failure = on_failure

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_failure: FailureCallback | None = None,
    ) -> None:
        if len(self.queued) >= self.capacity:
            raise QueueFullError("full")
        self.queued.append((topic, key, value, on_failure))

    def produce_many(
        self,
        topic: str,
        records: Sequence[Any],
        encode: Callable[[Any], tuple[bytes | None, bytes]],
        on_failure: FailureCallback,
        start: int = 0,
    ) -> int:
        end = min(len(records), start + max(0, self.capacity - len(self.queued)))
        for record in records[start:end]:
            key, value = encode(record)
            self.queued.append((topic, key, value, on_failure))
        return end

    def poll(self) -> None:
        queued, self.queued = self.queued, []
        for topic, key, value, callback in queued:
            if self.up:
                self.sent.append(value)
            else:
                (callback or self.on_failure)(topic, key, value, "timed out")  # type: ignore[misc]

    def pending(self) -> int:
        return len(self.queued)

    async def probe(self, timeout: float) -> bool:
        if self.refused is not None:
            raise ConfigError(self.refused)
        return self.up

    def purge(self) -> None:
        queued, self.queued = self.queued, []
        for topic, key, value, callback in queued:
            (callback or self.on_failure)(topic, key, value, "purged")  # type: ignore[misc]

    def close(self) -> None:
        self.closed = True


def make(tmp_path: Path, producer: FakeProducer, **kw: Any) -> Delivery:
    spool = Spool.open(
        tmp_path / "spool", max_bytes=kw.pop("spool_max", 1 << 20), segment_bytes=4096
    )
    return Delivery(producer, spool, stall_s=0.5, probe_interval_s=0.05, poll_interval_s=0.01)


async def wait_until(cond: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_records_flow_in_order_when_the_broker_is_up(tmp_path: Path) -> None:
    p = FakeProducer()
    d = make(tmp_path, p)
    await d.start()
    for i in range(100):
        d.submit("t", None, b"%d" % i)
    await wait_until(lambda: len(p.sent) == 100)
    assert p.sent == [b"%d" % i for i in range(100)]
    assert d.ready
    await d.close(2)


async def test_outage_spools_then_replays_everything_in_order(tmp_path: Path) -> None:
    p = FakeProducer()
    d = make(tmp_path, p)
    await d.start()
    p.up = False
    for i in range(50):
        d.submit("t", None, b"%d" % i)
    await wait_until(lambda: not d.ready and d.spool_records > 0)
    for i in range(50, 80):
        d.submit("t", None, b"%d" % i)  # while away: straight to the spool
    assert p.sent == []
    p.up = True
    await wait_until(lambda: d.ready and len(p.sent) == 80)
    assert sorted(int(v) for v in p.sent) == list(range(80))
    assert [int(v) for v in p.sent[-30:]] == list(range(50, 80))
    await d.close(2)


async def test_shutdown_while_away_keeps_records_for_the_next_start(tmp_path: Path) -> None:
    p = FakeProducer()
    p.up = False
    d = make(tmp_path, p)
    await d.start()
    for i in range(10):
        d.submit("t", b"k", b"%d" % i)
    await d.close(1)
    p.up = True
    d2 = make(tmp_path, p)
    await d2.start()
    await wait_until(lambda: len(p.sent) == 10)
    assert p.sent == [b"%d" % i for i in range(10)]
    await d2.close(1)


async def test_full_memory_and_spool_is_backpressure_not_silent_loss(tmp_path: Path) -> None:
    p = FakeProducer(capacity=100)
    p.up = False
    d = make(tmp_path, p, spool_max=2000)
    await d.start()
    accepted = 0
    with pytest.raises(BackpressureError):
        for _ in range(1000):
            d.submit("t", None, b"x" * 100)
            accepted += 1
    assert d.stats.rejected_full == 1
    assert d.stats.submitted == accepted
    assert d.stats.spooled + p.pending() == accepted
    await d.close(1)


async def test_a_full_client_queue_spools_and_the_spool_is_replayed(tmp_path: Path) -> None:
    p = FakeProducer(capacity=10)
    d = make(tmp_path, p)
    await d.start()
    for i in range(30):  # no poll in between: the client queue fills after 10
        d.submit("t", None, b"%d" % i)
    assert d.stats.queue_full == 1
    assert d.spool_records == 20
    await wait_until(lambda: d.ready and len(p.sent) == 30)
    assert p.sent == [b"%d" % i for i in range(30)]
    assert d.delivered == 30
    await d.close(1)


async def test_close_spools_what_the_broker_did_not_acknowledge(tmp_path: Path) -> None:
    p = FakeProducer()
    d = make(tmp_path, p)
    await d.start()
    p.up = False
    for i in range(5):
        d.submit("t", None, b"%d" % i)
    p.poll = lambda: None  # type: ignore[method-assign]  # the broker never answers
    await d.close(0.2)
    assert p.closed
    assert d.stats.spooled == 5
    p2 = FakeProducer()
    d2 = make(tmp_path, p2)
    await d2.start()
    await wait_until(lambda: len(p2.sent) == 5)
    assert p2.sent == [b"%d" % i for i in range(5)]
    await d2.close(1)


REFUSED = "the broker does not accept idempotent producers: set LEADBACK_KAFKA_IDEMPOTENT=false"


async def test_a_refused_configuration_at_start_stops_the_start(tmp_path: Path) -> None:
    p = FakeProducer()
    p.refused = REFUSED
    d = make(tmp_path, p)
    with pytest.raises(ConfigError, match="LEADBACK_KAFKA_IDEMPOTENT=false"):
        await d.start()
    assert p.closed
    d2 = make(tmp_path, FakeProducer())  # the spool was released: the slot can be reopened
    await d2.start()
    await d2.close(1)


async def test_a_refusal_after_start_spools_and_keeps_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = FakeProducer()
    d = make(tmp_path, p)
    await d.start()
    p.up = False
    p.refused = REFUSED
    for i in range(20):
        d.submit("t", None, b"%d" % i)  # accepted: the caller never sees the refusal
    await wait_until(lambda: not d.ready and d.spool_records == 20)
    await asyncio.sleep(0.2)  # several probes: still spooling, nothing sent
    assert p.sent == []
    assert d.spool_records == 20
    logged = capsys.readouterr()
    assert (logged.out + logged.err).count("LEADBACK_KAFKA_IDEMPOTENT=false") == 1  # once
    await d.close(1)
    p2 = FakeProducer()  # restarted with the setting changed
    d2 = make(tmp_path, p2)
    await d2.start()
    await wait_until(lambda: len(p2.sent) == 20)
    assert p2.sent == [b"%d" % i for i in range(20)]
    await d2.close(1)
