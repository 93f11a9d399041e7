"""Event time: the client's time corrected for its clock skew, never in the future, never
older than the allowed lag for live traffic."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from leadback import events as ev
from leadback.event_time import DEFAULT_MAX_LAG_MS, occurred_ms

# Unix ms from 1970 to 2200, and client clocks wrong by up to ten years either way.
times = st.integers(min_value=0, max_value=7_258_118_400_000)
client_times = st.integers(min_value=-315_360_000_000, max_value=7_573_478_400_000)
maybe = st.none() | client_times
lags = st.integers(min_value=0, max_value=30 * 86_400_000)
DAY = 86_400_000


@given(times, maybe, maybe, st.none() | lags)
def test_never_after_the_server_received_it(
    received: int, client: int | None, sent: int | None, lag: int | None
) -> None:
    assert occurred_ms(received, client, sent, max_lag_ms=lag) <= received


@given(times, maybe, maybe, lags)
def test_live_traffic_is_never_older_than_the_allowed_lag(
    received: int, client: int | None, sent: int | None, lag: int
) -> None:
    assert occurred_ms(received, client, sent, max_lag_ms=lag) >= received - lag


@given(times, st.none() | client_times, st.none() | lags)
def test_without_a_client_event_time_it_is_the_receive_time(
    received: int, sent: int | None, lag: int | None
) -> None:
    assert occurred_ms(received, None, sent, max_lag_ms=lag) == received


@given(
    received=times,
    skew=st.integers(min_value=-10 * 365 * DAY, max_value=10 * 365 * DAY),
    queued=st.integers(min_value=0, max_value=DEFAULT_MAX_LAG_MS),
)
def test_a_constant_clock_skew_is_corrected_exactly(received: int, skew: int, queued: int) -> None:
    """The event happened ``queued`` ms before it arrived; the client's clock is off by
    ``skew`` ms on both its times: the skew cancels out."""
    true_time = received - queued
    client = true_time + skew
    sent = received + skew  # sent when it arrived (network time folds into the interval)
    assert occurred_ms(received, client, sent, max_lag_ms=DEFAULT_MAX_LAG_MS) == true_time
    assert occurred_ms(received, client, sent, max_lag_ms=None) == true_time


@given(received=times, age=st.integers(min_value=0, max_value=20 * 365 * DAY))
def test_an_import_keeps_an_old_event_time_given_without_a_send_time(
    received: int, age: int
) -> None:
    assert occurred_ms(received, received - age, None, max_lag_ms=None) == received - age


def test_examples_a_reader_can_check() -> None:
    received = ev.datetime_ms(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    # A phone 1 h fast queued an event for 10 min: the event happened at 11:50.
    client = ev.datetime_ms(datetime(2026, 11, 23, 12, 50, tzinfo=UTC))
    sent = ev.datetime_ms(datetime(2026, 11, 23, 13, 0, tzinfo=UTC))
    assert ev.format_ms(occurred_ms(received, client, sent, max_lag_ms=DEFAULT_MAX_LAG_MS)) == (
        "2026-11-23T11:50:00.000Z"
    )
    # A live event claiming last year is placed at the oldest allowed time, 7 days back.
    last_year = received - 365 * DAY
    assert occurred_ms(received, last_year, None, max_lag_ms=DEFAULT_MAX_LAG_MS) == (
        received - 7 * DAY
    )
    # A clock from the future: the receive time.
    assert occurred_ms(received, received + DAY, None, max_lag_ms=None) == received


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),  # noqa: DTZ001 (hypothesis wants naive bounds)
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    )
)
def test_datetimes_become_milliseconds_without_rounding(value: datetime) -> None:
    """Naive means UTC, and no float rounding turns .123 into .122."""
    ms = ev.datetime_ms(value)
    assert ms == ev.datetime_ms(value.replace(tzinfo=UTC))
    truncated = value.replace(microsecond=value.microsecond // 1000 * 1000, tzinfo=UTC)
    assert ev.format_ms(ms) == truncated.strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{truncated.microsecond // 1000:03d}Z"
    )
