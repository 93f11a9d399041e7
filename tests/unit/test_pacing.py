"""The per-key and per-sender pacer on a manual clock, under concurrency."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from leadback.clock import ManualClock
from leadback.destinations import pacing
from leadback.destinations.pacing import Pacer


async def _run(pacer: Pacer, clock: ManualClock, keys: list[int]) -> list[tuple[float, int]]:
    """Every key's send, all waiting at once; the clock's time when each was let go."""
    sent: list[tuple[float, int]] = []

    async def one(key: int) -> None:
        await pacer.wait(key)
        sent.append((clock.monotonic(), key))  # no await between the pacer and the record

    await asyncio.gather(*(one(k) for k in keys))
    return sent


def _min_gap(times: list[float]) -> float:
    times = sorted(times)
    return min((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


async def test_concurrent_sends_keep_both_spacings() -> None:
    rng = random.Random(7)
    clock = ManualClock()
    pacer = Pacer(clock, per_key_s=1.0, rate_per_s=30.0)
    keys = [rng.randrange(5) for _ in range(60)]
    sent = await _run(pacer, clock, keys)

    assert sorted(k for _, k in sent) == sorted(keys)
    assert _min_gap([t for t, _ in sent]) >= 1 / 30 - 1e-9
    for key in set(keys):
        assert _min_gap([t for t, k in sent if k == key]) >= 1.0 - 1e-9


async def test_sequential_sends_wait_no_longer_than_they_must() -> None:
    clock = ManualClock()
    pacer = Pacer(clock, per_key_s=1.0, rate_per_s=4.0)
    times = []
    for key in [1, 2, 3, 1, 4]:
        await pacer.wait(key)
        times.append(clock.monotonic())
    # key 1 again at 0.75 must wait for its second; key 4 then only for the sender's quarter.
    assert times == [0.0, 0.25, 0.5, 1.0, 1.25]


async def test_a_held_key_waits_and_the_others_do_not() -> None:
    clock = ManualClock()
    pacer = Pacer(clock, per_key_s=1.0, rate_per_s=1000.0)
    await pacer.wait(1)
    pacer.hold(1, 30.0)
    pacer.hold(1, 5.0)  # a shorter hold does not shorten the longer one
    await pacer.wait(2)
    assert clock.monotonic() < 1.0
    await pacer.wait(1)
    assert clock.monotonic() == 30.0


async def test_stale_keys_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    pacer = Pacer(clock, per_key_s=1.0, rate_per_s=1e9)
    monkeypatch.setattr(pacing, "_PRUNE_AT", 10)
    for key in range(11):
        await pacer.wait(key)
    clock.advance(2.0)
    await pacer.wait(99)
    assert set(pacer._key_next) == {99}
    assert pacer._keys == {}
