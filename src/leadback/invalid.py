"""The invalid-topic record: one shape, whatever refused the input.

``leadback.events.invalid.v1`` keeps what Leadback could not accept, so nothing is dropped
silently. Every record has every key below, in this order, ``null`` where the source has
nothing to say (documented in ``docs/asyncapi.yaml``, ``InvalidInput``)::

    {"schema_version": 1, "reason": "unknown_site", "detail": "'nope'", "field": "site",
     "source": "pixel", "received_at": "2026-11-23T07:00:00.123Z", "site_id": "nope",
     "request": {"method": "GET", "path": "/p.gif", "query": "site=nope&url=...",
                 "body": null, "body_bytes": null, "user_agent": "Mozilla/5.0 ...",
                 "ip": "203.0.113.0"}}

What this module guarantees, so no caller has to remember it:

* trait values (contact details) never appear in clear: ``tr.<key>=`` values in a query and
  the values of every ``traits`` object in a JSON body become ``[redacted]`` (keys are kept,
  to debug); a body that is not JSON but may hold traits is replaced whole;
* the client IP is truncated (IPv4 /24, IPv6 /48), never whole;
* ``query`` and ``body`` keep at most :data:`MAX_REQUEST_CHARS` characters, ``detail``
  :data:`MAX_DETAIL_CHARS`, ``user_agent`` ``events.MAX_USER_AGENT``;
* ``received_at`` is the ``now`` the caller passes (its injected clock), never read here.

Headers other than the user agent are not recorded: the write key never reaches the topic.
The Kafka key is the site id, else the truncated IP, else none (:func:`kafka_record`).
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict

import orjson

from leadback.enrich.ip import truncate_ip
from leadback.events import MAX_USER_AGENT, format_ts
from leadback.protocols.query_string import decode_name

INVALID_SCHEMA_VERSION: Final = 1
MAX_REQUEST_CHARS: Final = 8192  # of a refused query or body
MAX_DETAIL_CHARS: Final = 1000
MAX_SITE_ID_CHARS: Final = 64
REDACTED: Final = "[redacted]"
_MAX_REDACT_DEPTH: Final = 32

#: Who refused the input: an ingest protocol, or the segmenter (a record on the events topic
#: that ClickHouse would not store).
InvalidSource = Literal["pixel", "json", "segment", "snowplow", "tag", "segmenter"]


class InvalidRequest(TypedDict):
    """What arrived, as far as the source saw it; the same keys for every source."""

    method: str | None
    path: str | None
    query: str | None  # traits redacted, cut; bytes that are not text kept as latin-1
    body: str | None  # JSON with trait values redacted, cut; the segmenter's Kafka value
    body_bytes: int | None  # size of the body as received, before redaction and cut
    user_agent: str | None
    ip: str | None  # truncated


class InvalidRecord(TypedDict):
    """One record of ``leadback.events.invalid.v1``."""

    schema_version: int
    reason: str  # a reason code from docs/events.md
    detail: str
    field: str | None  # the parameter or JSON path at fault, when known
    source: InvalidSource
    received_at: str
    site_id: str | None
    request: InvalidRequest


def invalid_record(
    reason: str,
    detail: str,
    *,
    source: InvalidSource,
    now: float,
    site_id: str | None = None,
    field: str | None = None,
    method: str | None = None,
    path: str | None = None,
    query: bytes | None = None,
    body: bytes | None = None,
    user_agent: str | None = None,
    ip: str | None = None,
) -> InvalidRecord:
    """The record for an input refused with ``reason`` at ``now`` (Unix seconds).

    ``query`` is a raw URL query string (no ``?``), ``body`` a raw request body or Kafka
    value, ``ip`` the client IP as seen (truncated here); each is redacted as its kind needs
    (see the module docstring).
    """
    return {
        "schema_version": INVALID_SCHEMA_VERSION,
        "reason": reason,
        "detail": detail[:MAX_DETAIL_CHARS],
        "field": field,
        "source": source,
        "received_at": format_ts(now),
        "site_id": site_id[:MAX_SITE_ID_CHARS] if site_id else None,
        "request": {
            "method": method,
            "path": path,
            "query": None if query is None else redacted_query(query[:MAX_REQUEST_CHARS]),
            "body": None if body is None else redacted_body(body)[:MAX_REQUEST_CHARS],
            "body_bytes": None if body is None else len(body),
            "user_agent": user_agent[:MAX_USER_AGENT] if user_agent else None,
            "ip": truncate_ip(ip) if ip else None,
        },
    }


def rejected_event_record(reason: str, value: bytes, detail: str, now: float) -> InvalidRecord:
    """The record for a value on the events topic that the segmenter could not store.

    The value goes in ``request.body`` (redacted like a JSON body); ``site_id`` is the
    value's own when it is a JSON object that has one.
    """
    site_id: str | None = None
    if value.lstrip().startswith(b"{"):
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("site_id"), str):
            site_id = doc["site_id"]
    return invalid_record(reason, detail, source="segmenter", now=now, site_id=site_id, body=value)


def kafka_record(record: InvalidRecord) -> tuple[bytes | None, bytes]:
    """``(key, value)`` for the invalid topic: keyed by site id, else truncated IP, else none."""
    key = record["site_id"] or record["request"]["ip"]
    return (key.encode() if key else None), orjson.dumps(record)


def redacted_query(query: bytes) -> str:
    """A URL query with the value of every ``tr.<key>`` parameter replaced by ``[redacted]``.

    A name counts as a trait after percent- and ``+``-decoding, in any case (``tr%2Eemail``,
    ``%74r.email``, ``TR.email``): the pixel decodes names before it looks at them.
    """
    # latin-1 maps each byte to one character: any bytes decode, nothing is lost.
    parts = query.decode("latin-1").split("&")
    for i, part in enumerate(parts):
        name, sep, _ = part.partition("=")
        if sep and _is_trait_name(name):
            parts[i] = f"{name}={REDACTED}"
    return "&".join(parts)


def _is_trait_name(name: str) -> bool:
    if "%" in name or "+" in name:
        name = decode_name(name, errors="replace")
    return name[:3].lower() == "tr."


def redacted_body(body: bytes) -> str:
    """A JSON body as text with the values of every ``traits`` object replaced.

    Unchanged when it has none. One that does not parse but may hold traits (it mentions
    ``trait``, or has ``\\u`` escapes that could spell it) is replaced whole: we cannot tell
    where they are.
    """
    if not body:
        return ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        if b"trait" in body.lower() or b"\\u" in body:
            return REDACTED
        return body.decode("utf-8", "replace")
    redacted = _redact(doc)
    if redacted == doc:
        return body.decode("utf-8", "replace")
    return orjson.dumps(redacted).decode()


def _redact(doc: Any, depth: int = 0) -> Any:
    """``doc`` with the values of every ``traits`` object in it replaced (keys kept).

    Anything nested deeper than we look is replaced whole.
    """
    if depth > _MAX_REDACT_DEPTH:
        return REDACTED
    if isinstance(doc, list):
        return [_redact(item, depth + 1) for item in doc]
    if not isinstance(doc, dict):
        return doc
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key != "traits":
            out[key] = _redact(value, depth + 1)
        elif isinstance(value, dict):
            out[key] = dict.fromkeys(value, REDACTED)
        else:
            out[key] = REDACTED
    return out
