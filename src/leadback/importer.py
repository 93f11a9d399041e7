"""``leadback events import``: past events from a JSON-lines file onto the events topic.

Each line is one event in the JSON API's shape (with ``site_id``, else the default site) or a
Segment message (:mod:`leadback.protocols.segment_messages`). Every event goes through the
JSON API's own validation (:func:`~leadback.protocols.jsonapi.canonical_from_json`: the
site's consent default, contact protection, bot flag), in import mode: its ``timestamp`` is
kept as given (not corrected against the import's own time, no lower limit; only never in the
future), and ``received_at`` is the import's time. Accepted events are produced to the events
topic keyed ``site_id:visitor_id``, so the segmenter stores them and audiences see them like
any other.

Rules of an import:

* every line needs an event time (``timestamp``): history without one would land as "now";
* an event older than the events TTL (``LEADBACK_CLICKHOUSE_EVENTS_TTL_DAYS``) is refused, as
  the store would drop it unseen;
* a line without an event id gets ``imp-`` + a hash of the line, so importing the same file
  twice stores each event once (the store collapses a repeated ``event_id``);
* the counts reported as imported are acknowledged by the broker: nothing reported is lost.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, cast

import orjson

from leadback import events as ev
from leadback.clock import Clock, SystemClock
from leadback.enrich.bots import BotDetector
from leadback.errors import InvalidInputError
from leadback.identity.contacts import ContactCipher
from leadback.kafka.producer import RecordProducer
from leadback.protocols.jsonapi import canonical_from_json
from leadback.protocols.segment_messages import event_from_segment, is_segment_message
from leadback.settings import Settings

MAX_REPORTED: Final = 10  # rejections kept with their line numbers for the summary
_GZIP_MAGIC: Final = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A line that was not imported, and why."""

    line: int
    reason: str
    detail: str
    field: str | None = None

    def __str__(self) -> str:
        where = f" at {self.field}" if self.field else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"line {self.line}: {self.reason}{where}{detail}"


@dataclass(slots=True)
class ImportReport:
    """What an import did. ``imported``: acknowledged by the broker (or, in a dry run,
    valid); ``rejected``: lines refused, the first :data:`MAX_REPORTED` of them in
    ``rejections``."""

    lines: int = 0
    imported: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def reject(self, line: int, exc: InvalidInputError) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REPORTED:
            self.rejections.append(Rejection(line, exc.reason, exc.detail, exc.field))


@dataclass(frozen=True, slots=True)
class ImportPolicy:
    """What the canonicalization of an import needs from the settings."""

    sites: frozenset[str]
    consent_defaults: dict[str, Literal["granted", "denied"]]
    consent_default: Literal["granted", "denied"]
    honor_dnt: bool
    default_phone_region: str | None
    max_event_bytes: int
    ttl_ms: int
    default_site: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, default_site: str | None) -> ImportPolicy:
        return cls(
            sites=frozenset(settings.sites),
            consent_defaults={
                site: s.consent_default for site, s in settings.sites.items() if s.consent_default
            },
            consent_default=settings.ingest.consent_default,
            honor_dnt=settings.ingest.honor_dnt,
            default_phone_region=settings.identity.default_phone_region,
            max_event_bytes=settings.ingest.max_event_bytes,
            ttl_ms=settings.clickhouse.events_ttl_days * 86_400_000,
            default_site=default_site,
        )


class EventImporter:
    """Turns lines into canonical events and produces them in acknowledged batches."""

    def __init__(
        self,
        policy: ImportPolicy,
        cipher: ContactCipher,
        *,
        topic: str,
        producer: RecordProducer | None,
        batch_size: int = 1000,
        clock: Clock | None = None,
        bots: BotDetector | None = None,
    ) -> None:
        """``producer`` None: a dry run (validate only)."""
        if policy.default_site is not None and policy.default_site not in policy.sites:
            raise InvalidInputError("unknown_site", f"{policy.default_site!r}", field="site")
        self._policy = policy
        self._cipher = cipher
        self._topic = topic
        self._producer = producer
        self._batch_size = max(1, batch_size)
        self._clock = clock or SystemClock()
        self._bots = bots or BotDetector()
        self.report = ImportReport()  # of the current (or last) run, also when it failed

    @property
    def producer(self) -> RecordProducer | None:
        """The producer (started and stopped by the caller); None in a dry run."""
        return self._producer

    def canonical(self, line: bytes, now: float) -> ev.CanonicalEvent:
        """One line -> a canonical event, or :class:`InvalidInputError` saying why not."""
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError("invalid_json", f"not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise InvalidInputError("invalid_event", "an event must be a JSON object")
        policy = self._policy
        if is_segment_message(raw):
            site = policy.default_site
            raw = event_from_segment(raw)
        else:
            site = raw.get("site_id") or policy.default_site
        if not isinstance(site, str) or not site:
            raise InvalidInputError("missing_site", "no site_id and no --site", field="site_id")
        if site not in policy.sites:
            raise InvalidInputError("unknown_site", f"{site[:64]!r}", field="site_id")
        if raw.get("timestamp") is None:
            raise InvalidInputError(
                "missing_timestamp", "an imported event needs its time", field="timestamp"
            )
        if not raw.get("event_id"):
            raw["event_id"] = "imp-" + hashlib.sha256(line.strip()).hexdigest()[:32]
        event = canonical_from_json(
            raw,
            site_id=site,
            now=now,
            peer_ip=None,
            header_user_agent=None,
            consent_default=policy.consent_defaults.get(site, policy.consent_default),
            honor_dnt=policy.honor_dnt,
            bots=self._bots,
            cipher=self._cipher,
            default_phone_region=policy.default_phone_region,
            max_lag_ms=None,  # an import: the event time is kept
        )
        # Canonical timestamps of years 1970..9999 compare as strings.
        if event["occurred_at"] < ev.format_ms(int(now * 1000) - policy.ttl_ms):
            raise InvalidInputError(
                "older_than_ttl",
                f"{event['occurred_at']} is past the events TTL (LEADBACK_CLICKHOUSE_EVENTS_"
                "TTL_DAYS): the store would drop it",
                field="timestamp",
            )
        return event

    async def run(
        self,
        lines: Iterator[bytes],
        progress: Callable[[ImportReport], None] | None = None,
    ) -> ImportReport:
        """Import every line; ``progress`` is called every batch-size lines. Raises
        :class:`~leadback.errors.BrokerUnavailableError` if the broker fails (then
        :attr:`report` counts what it acknowledged before)."""
        report = self.report = ImportReport()
        batch: list[tuple[bytes, bytes]] = []
        for number, line in enumerate(lines, 1):
            report.lines = number
            if progress is not None and number % self._batch_size == 0:
                progress(report)
            if not line.strip():
                continue
            try:
                event = self.canonical(line, self._clock.now())
                value = orjson.dumps(event)
                if len(value) > self._policy.max_event_bytes:
                    raise InvalidInputError(
                        "event_too_large", f"{len(value)} bytes > {self._policy.max_event_bytes}"
                    )
            except InvalidInputError as exc:
                report.reject(number, exc)
                continue
            batch.append((ev.event_key(event["site_id"], event["visitor_id"]), value))
            if len(batch) >= self._batch_size:
                await self._send(batch, report)
                batch = []
        await self._send(batch, report)
        if progress is not None:
            progress(report)
        return report

    async def _send(self, batch: list[tuple[bytes, bytes]], report: ImportReport) -> None:
        """Produce a batch and wait for every acknowledgement before counting it."""
        if self._producer is not None and batch:
            futures = [await self._producer.send(self._topic, k, v) for k, v in batch]
            for future in futures:
                await future
        report.imported += len(batch)


def open_lines(path: str) -> Iterator[bytes]:
    """The lines of a file (``-``: standard input), gunzipped when it is gzip (by its first
    bytes, so a compressed stdin works too). The file is opened here: ``OSError`` now, not
    at the first line."""
    stream: io.BufferedReader = (
        cast("io.BufferedReader", sys.stdin.buffer) if path == "-" else Path(path).open("rb")  # noqa: SIM115
    )
    return _lines(stream, close=path != "-")


def _lines(stream: io.BufferedReader, *, close: bool) -> Iterator[bytes]:
    try:
        if stream.peek(2)[:2] == _GZIP_MAGIC:
            yield from gzip.GzipFile(fileobj=stream)
        else:
            yield from stream
    finally:
        if close:
            stream.close()
