"""Ingest counters (plain ints on the hot path) and their Prometheus view."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from leadback.kafka.delivery import Delivery
from leadback.metrics import Sample


@dataclass
class IngestStats:
    """What ingest counts; read at scrape time."""

    requests: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    accepted: collections.Counter[str] = field(default_factory=collections.Counter)
    invalid: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped: int = 0
    # The pixel's own counters are plain attributes: cheaper than a Counter per request.
    pixel_requests: int = 0
    pixel_accepted: int = 0


def ingest_samples(stats: IngestStats, delivery: Delivery) -> Iterable[Sample]:
    requests = stats.requests.copy()
    requests[("pixel", 200)] += stats.pixel_requests
    accepted = stats.accepted.copy()
    accepted["pixel"] += stats.pixel_accepted
    for (route, status), n in requests.items():
        yield Sample(
            "leadback_ingest_requests",
            "HTTP requests by route and status",
            "counter",
            n,
            (("route", route), ("status", str(status))),
        )
    for source, n in accepted.items():
        yield Sample(
            "leadback_ingest_events_accepted",
            "events accepted for delivery",
            "counter",
            n,
            (("source", source),),
        )
    for reason, n in stats.invalid.items():
        yield Sample(
            "leadback_ingest_events_invalid",
            "inputs refused, by reason",
            "counter",
            n,
            (("reason", reason),),
        )
    yield Sample(
        "leadback_ingest_events_dropped",
        "events lost: memory and spool full",
        "counter",
        stats.dropped,
    )
    d = delivery.stats
    yield Sample(
        "leadback_delivery_delivered", "records acked by Kafka", "counter", delivery.delivered
    )
    yield Sample(
        "leadback_delivery_spooled", "records written to the disk spool", "counter", d.spooled
    )
    yield Sample(
        "leadback_delivery_replayed", "records replayed from the spool", "counter", d.replayed
    )
    yield Sample(
        "leadback_delivery_send_failures",
        "failed sends (spooled, not lost)",
        "counter",
        d.send_failures,
    )
    yield Sample(
        "leadback_delivery_queue_depth",
        "records in the producer's queue or in flight, not yet acknowledged",
        "gauge",
        delivery.queue_depth,
    )
    yield Sample(
        "leadback_delivery_queue_full",
        "times the producer's queue was full (records spooled instead)",
        "counter",
        d.queue_full,
    )
    yield Sample(
        "leadback_delivery_spool_bytes",
        "bytes waiting in the disk spool",
        "gauge",
        delivery.spool_bytes,
    )
    yield Sample(
        "leadback_delivery_broker_available",
        "1 when records flow to Kafka",
        "gauge",
        1.0 if delivery.ready else 0.0,
    )
