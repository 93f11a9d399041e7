"""What HTTP channels share: reading ``Retry-After`` and JSON error bodies, turning httpx's
transport errors into :class:`DestinationUnavailable`, and keeping contact details out of
stored responses.

httpx's exceptions carry the request, whose URL may hold a credential (Telegram puts the bot
token in the path): the errors made here name the failure's kind only, never ``str(exc)``.
"""

from __future__ import annotations

import email.utils
import re
from typing import Any, Final

import httpx
import orjson

from leadback.destinations.base import DestinationUnavailable

# Runs of 7+ digits, optionally with a leading + and the separators people write numbers with:
# phone numbers and chat ids. Shorter numbers (error codes, "retry after 34") stay readable.
_LONG_NUMBER: Final = re.compile(r"\+?\d[\d \-().]{5,}\d")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object; ``{}`` when it is not one (an HTML 502 page)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def redact_numbers(text: str) -> str:
    """``text`` with every phone-number-like or chat-id-like run of digits replaced."""
    return _LONG_NUMBER.sub("<redacted>", text)


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None.

    ``now`` is the wall clock in Unix seconds (the channel's injected clock), for the date form.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def unavailable_from(exc: httpx.HTTPError) -> DestinationUnavailable:
    """The error for a call that got no HTTP answer (timeout, refused connection, reset)."""
    if isinstance(exc, httpx.TimeoutException):
        return DestinationUnavailable("timeout", f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.NetworkError):
        return DestinationUnavailable("connection_error", type(exc).__name__)
    return DestinationUnavailable("http_error", type(exc).__name__)
