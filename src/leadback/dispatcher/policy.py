"""The pure rules of who gets what when: holdout, frequency caps, quiet hours, delivery ids,
retry delays. No I/O here, so each rule is tested on its own (hypothesis)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from leadback.campaigns.definitions import Cap, QuietHours

_MINUTE_MS = 60_000


def delivery_id(
    site: str, campaign: str, person: str, membership_version: int, entered_at: int, step: int
) -> str:
    """The stable id of one message: (site, campaign, person, membership, step).

    A membership is its version and entry time: versions start again at 1 for a person who
    comes back after an erasure, entry times do not repeat. Every attempt of the message
    carries the id (webhook ``webhook-id``, e-mail ``Message-ID``), so a receiver that
    deduplicates drops a repeat.
    """
    key = f"{site}\x00{campaign}\x00{person}\x00{membership_version}\x00{entered_at}\x00{step}"
    return "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def holdout_bucket(person: str, campaign: str) -> float:
    """A person's stable place in [0, 100) for one campaign: uniform over people, the same on
    every member and every restart, independent between campaigns."""
    digest = hashlib.sha256(f"holdout\x00{campaign}\x00{person}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def held_out(person: str, campaign: str, percent: float) -> bool:
    """Whether ``person`` is in the ``percent`` share of ``campaign`` that gets nothing."""
    return percent > 0 and holdout_bucket(person, campaign) < percent


def cap_wait_ms(sent_at_ms: Iterable[int], cap: Cap, now_ms: int) -> int:
    """0 if one more message fits ``cap`` now, else how long until it does (ms).

    ``sent_at_ms``: when earlier messages counted by the cap went (or were about to go).
    """
    window = sorted(t for t in sent_at_ms if t > now_ms - cap.per)
    if len(window) < cap.max:
        return 0
    # The oldest message that must leave the window before one more fits.
    return window[len(window) - cap.max] + cap.per - now_ms


def zone(name: str | None, fallback: str) -> ZoneInfo:
    """The time zone ``name`` names, else ``fallback`` (a person's trait may be anything)."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(fallback)


def quiet_until_ms(now_ms: int, quiet: QuietHours, tz: ZoneInfo) -> int:
    """0 if ``now_ms`` is outside the quiet window in ``tz``, else when the window ends (ms).

    The window runs from ``start`` to ``end`` local time and may cross midnight
    (21:00-08:00). A window end that does not exist on a DST day (a skipped hour) is taken as
    the first valid minute after it.
    """
    start, end = quiet.minutes()
    if start == end:
        return 0
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(tz)
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else minute >= start or minute < end
    if not inside:
        return 0
    day = local.date()
    if start > end and minute >= start:  # before midnight: the window ends tomorrow
        day = day + timedelta(days=1)
    naive = datetime(day.year, day.month, day.day, end // 60, end % 60)  # noqa: DTZ001
    ends = naive.replace(tzinfo=tz)
    # A wall time skipped by DST does not round-trip: move to the first valid one.
    while ends.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        naive += timedelta(minutes=1)
        ends = naive.replace(tzinfo=tz)
    return max(int(ends.timestamp() * 1000), now_ms + 1)


def retry_delay_s(
    attempt: int, *, initial_s: float, max_s: float, retry_after: float | None, rng: random.Random
) -> float:
    """Delay before attempt ``attempt + 1``: exponential from ``initial_s`` with full jitter
    over the upper half, never under the provider's ``Retry-After``, at most ``max_s``."""
    ceiling = min(max_s, initial_s * 2 ** max(0, attempt - 1))
    delay = ceiling / 2 + rng.random() * ceiling / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    return float(min(delay, max(max_s, retry_after or 0.0)))
