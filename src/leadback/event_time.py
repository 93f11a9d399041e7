"""When an event happened (``occurred_at``): the client's event time, corrected for the
client's clock skew, clamped to what the server can believe.

A client's clock may be wrong by minutes or years, but the *interval* it measures between
creating an event and sending it is right. So, like Segment and Snowplow, the event time is
the server's receive time minus that interval:

    occurred = received - (sent - client)

* Segment (https://segment.com/docs/connections/spec/common/, "Timestamps"):
  ``originalTimestamp`` is the device's time when the call was made, ``sentAt`` the device's
  time when it was sent, ``receivedAt`` the server's time when it arrived, and ``timestamp``
  the event time "corrected for client-device clock skew": ``receivedAt - (sentAt -
  originalTimestamp)``. A ``timestamp`` given without ``sentAt`` (server libraries, historical
  imports) is taken as it is. Segment's docs also note that libraries adding ``sentAt`` only
  when a queued batch is first tried make the corrected time of events queued offline lean
  towards ``receivedAt`` (segmentio/segment-docs#7645); the same holds here.
* Snowplow (https://docs.snowplow.io/docs/events/timestamps/): ``derived_tstamp =
  collector_tstamp - (dvce_sent_tstamp - dvce_created_tstamp)``.

Rules, on Unix milliseconds (nothing here parses or formats a date; the pixel path is hot):

* client event time and send time: corrected as above;
* client event time only: taken as it is (the sender vouches for its clock: a server, an
  import);
* no client event time: ``received``.

Then clamped: never after ``received`` (an event cannot come from the future), and for live
traffic never before ``received - max_lag`` (``LEADBACK_INGEST_EVENT_TIME_MAX_LAG_S``, 7 days
by default), so a broken clock cannot slip an event under an audience's window or its TTL. An
import passes ``max_lag_ms=None``: its events keep their own, older, time.
"""

from __future__ import annotations

from typing import Final

DEFAULT_MAX_LAG_MS: Final = 7 * 24 * 3600 * 1000


def occurred_ms(
    received_ms: int,
    client_ms: int | None,
    sent_ms: int | None,
    *,
    max_lag_ms: int | None,
) -> int:
    """The event time in Unix milliseconds (see the module docstring).

    ``received_ms``: the server's clock when it took the event; ``client_ms``: the client's
    clock when the event happened; ``sent_ms``: the client's clock when it sent the event;
    ``max_lag_ms``: how far before ``received_ms`` an event may be placed (``None``: no
    limit, for imports).
    """
    if client_ms is None:
        return received_ms
    occurred = client_ms if sent_ms is None else received_ms - (sent_ms - client_ms)
    if occurred > received_ms:
        return received_ms
    if max_lag_ms is not None and occurred < received_ms - max_lag_ms:
        return received_ms - max_lag_ms
    return occurred
