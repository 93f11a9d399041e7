"""The dispatcher's pure rules: holdout, caps, quiet hours, retry delays, delivery ids."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from leadback.campaigns.definitions import Cap, QuietHours
from leadback.dispatcher.policy import (
    cap_wait_ms,
    delivery_id,
    held_out,
    holdout_bucket,
    quiet_until_ms,
    retry_delay_s,
)

HOUR_MS = 3_600_000
BERLIN = ZoneInfo("Europe/Berlin")


def at(tz: ZoneInfo, *parts: int) -> int:
    return int(datetime(*parts, tzinfo=tz).timestamp() * 1000)  # type: ignore[misc]


def test_the_holdout_share_is_within_statistical_bounds() -> None:
    people = [f"visitor-{i}" for i in range(20_000)]
    held = sum(held_out(p, "cart-recovery", 10) for p in people)
    # Binomial(20000, 0.1): sd = 42.4; 5 sd either side.
    assert 2000 - 212 < held < 2000 + 212
    # Independent between campaigns: the overlap is about 1 %, not 10 %.
    both = sum(held_out(p, "a", 10) and held_out(p, "b", 10) for p in people)
    assert both < 400


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_the_holdout_bucket_is_stable_and_in_range(person: str, campaign: str) -> None:
    bucket = holdout_bucket(person, campaign)
    assert 0 <= bucket < 100
    assert holdout_bucket(person, campaign) == bucket
    assert not held_out(person, campaign, 0)
    assert held_out(person, campaign, 100)


def test_delivery_ids_differ_by_every_part_and_are_stable() -> None:
    base = ("demo", "c", "p", 1, 1000, 0)
    ids = {
        delivery_id(*base),
        delivery_id("shop", "c", "p", 1, 1000, 0),
        delivery_id("demo", "d", "p", 1, 1000, 0),
        delivery_id("demo", "c", "q", 1, 1000, 0),
        delivery_id("demo", "c", "p", 2, 1000, 0),
        delivery_id("demo", "c", "p", 1, 2000, 0),
        delivery_id("demo", "c", "p", 1, 1000, 1),
    }
    assert len(ids) == 7
    assert delivery_id(*base) == delivery_id(*base)


def test_a_cap_allows_up_to_max_in_the_window_then_says_when() -> None:
    cap = Cap(max=3, per="7d")
    now = 100 * 24 * HOUR_MS
    assert cap_wait_ms([], cap, now) == 0
    sent = [now - 6 * 24 * HOUR_MS, now - HOUR_MS]
    assert cap_wait_ms(sent, cap, now) == 0
    sent.append(now - 60_000)
    assert cap_wait_ms(sent, cap, now) == 24 * HOUR_MS  # when the oldest leaves the window
    assert cap_wait_ms([now - 8 * 24 * HOUR_MS] * 5, cap, now) == 0  # older ones do not count


@given(
    st.lists(st.integers(0, 10 * HOUR_MS), max_size=20),
    st.integers(1, 5),
    st.integers(1, 5 * HOUR_MS),
)
def test_after_the_cap_wait_one_more_fits(sent: list[int], max_: int, per_ms: int) -> None:
    cap = Cap(max=max_, per=per_ms)
    now = 10 * HOUR_MS
    wait = cap_wait_ms(sent, cap, now)
    assert wait >= 0
    if wait:
        assert cap_wait_ms(sent, cap, now + wait) == 0
        assert cap_wait_ms(sent, cap, now + wait - 1) > 0


def test_quiet_hours_hold_a_send_until_the_window_ends_in_the_recipients_zone() -> None:
    quiet = QuietHours(start="21:00", end="08:00")
    evening = at(BERLIN, 2026, 11, 29, 22, 30)
    assert quiet_until_ms(evening, quiet, BERLIN) == at(BERLIN, 2026, 11, 30, 8, 0)
    early = at(BERLIN, 2026, 11, 29, 7, 59)
    assert quiet_until_ms(early, quiet, BERLIN) == at(BERLIN, 2026, 11, 29, 8, 0)
    assert quiet_until_ms(at(BERLIN, 2026, 11, 29, 8, 0), quiet, BERLIN) == 0
    assert quiet_until_ms(at(BERLIN, 2026, 11, 29, 20, 59), quiet, BERLIN) == 0
    # The same instant is not quiet in New York (16:30 there).
    assert quiet_until_ms(evening, quiet, ZoneInfo("America/New_York")) == 0


def test_a_window_ending_in_a_skipped_dst_hour_ends_at_the_first_valid_minute() -> None:
    quiet = QuietHours(start="01:00", end="02:30")  # 2:00-3:00 does not exist on 2026-03-29
    night = at(BERLIN, 2026, 3, 29, 1, 30)
    until = quiet_until_ms(night, quiet, BERLIN)
    local = datetime.fromtimestamp(until / 1000, tz=UTC).astimezone(BERLIN)
    assert (local.hour, local.minute) == (3, 0)


@given(
    st.integers(0, 23 * 60 + 59),
    st.integers(0, 23 * 60 + 59),
    st.integers(1_700_000_000_000, 1_900_000_000_000),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
@settings(max_examples=300)
def test_when_the_window_ends_it_is_no_longer_quiet(
    start: int, end: int, now: int, zone_name: str
) -> None:
    quiet = QuietHours(
        start=f"{start // 60:02d}:{start % 60:02d}", end=f"{end // 60:02d}:{end % 60:02d}"
    )
    tz = ZoneInfo(zone_name)
    until = quiet_until_ms(now, quiet, tz)
    if until:
        assert until > now
        assert until - now <= 25 * HOUR_MS
        assert quiet_until_ms(until, quiet, tz) == 0


@given(st.integers(1, 30), st.one_of(st.none(), st.floats(0, 10_000)))
def test_retry_delays_grow_honour_retry_after_and_stay_bounded(
    attempt: int, retry_after: float | None
) -> None:
    rng = random.Random(attempt)
    delay = retry_delay_s(attempt, initial_s=5, max_s=3600, retry_after=retry_after, rng=rng)
    ceiling = min(3600, 5 * 2 ** (attempt - 1))
    assert delay >= (retry_after or 0) or delay == 3600 < (retry_after or 0)
    assert delay >= ceiling / 2 or retry_after is not None
    assert delay <= max(3600, retry_after or 0)


def test_dead_records_match_the_asyncapi_schema() -> None:
    from pathlib import Path

    import yaml

    from leadback.destinations.base import DestinationRejected
    from leadback.dispatcher.records import dead_from
    from leadback.dispatcher.steps import StepRow

    spec = yaml.safe_load((Path(__file__).parents[2] / "docs/asyncapi.yaml").read_text())
    schema = spec["components"]["schemas"]["DeadDelivery"]
    row = StepRow("demo", "c", "p", 1, 0, "a", 0, 1000, change_at=1000)
    error = DestinationRejected("http_400", "bad", status=400, response="no")
    record = dead_from(row, "webhook", "hook", error.reason, 2000, error)
    assert set(record) == set(schema["properties"]) == set(schema["required"])
    assert record["channel"] in schema["properties"]["channel"]["enum"]
    assert (record["http_status"], record["response"], record["attempts"]) == (400, "no", 1)
