"""Delivery: the request path never blocks, and a failing broker loses nothing (fake producer).

The same behaviour against the real broker is proven in tests/integration/test_broker_outage.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from leadback.errors import BackpressureError, BrokerUnavailableError
from leadback.kafka.delivery import Delivery
from leadback.kafka.spool import Spool


class FakeProducer:
    """Acks immediately while ``up``; fails sends while down."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[bytes] = []

    async def start(self) -> None:
        if not self.up:
            raise BrokerUnavailableError("down")

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.up:
            self.sent.append(value)
            fut.set_result(None)
        else:
            fut.set_exception(BrokerUnavailableError("down"))
        return fut

    async def flush(self) -> None:
        return None

    async def probe(self, timeout: float) -> bool:
        return self.up

    async def stop(self) -> None:
        return None


def make(tmp_path: Path, producer: FakeProducer, **kw: Any) -> Delivery:
    spool = Spool.open(
        tmp_path / "spool", max_bytes=kw.pop("spool_max", 1 << 20), segment_bytes=4096
    )
    return Delivery(
        producer,
        spool,
        queue_max_events=kw.pop("queue_max", 1000),
        queue_max_bytes=1 << 20,
        stall_s=0.5,
        probe_interval_s=0.05,
    )


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
    p = FakeProducer()
    p.up = False
    d = make(tmp_path, p, spool_max=2000, queue_max=100)
    await d.start()
    with pytest.raises(BackpressureError):
        for _ in range(1000):
            d.submit("t", None, b"x" * 100)
    assert d.stats.rejected_full == 1
    await d.close(1)
