"""The ``Retry-After`` header (RFC 9110 §10.2.3): seconds, or an HTTP date."""

from __future__ import annotations

import email.utils
from datetime import UTC
from typing import Final

MAX_RETRY_AFTER_S: Final = 7 * 86400.0  # a longer wait is a provider bug; the dispatcher caps it


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``now`` (Unix time), or ``None`` if the header is absent or does not
    parse. A date in the past gives 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; an "-0000" zone parses as naive
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)
