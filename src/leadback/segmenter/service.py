"""Run one segmenter process: settings -> ClickHouse (migrations) -> consumer group loop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from leadback.errors import BrokerUnavailableError
from leadback.kafka.config import common_options, producer_options, resolve_bootstrap
from leadback.kafka.consumer import GroupConsumer
from leadback.kafka.producer import KafkaRecordProducer
from leadback.logs import get_logger
from leadback.metrics import CallbackCollector, Sample
from leadback.segmenter.loop import Segmenter
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

log = get_logger(__name__)


def _samples(seg: Segmenter) -> Iterable[Sample]:
    st = seg.stats
    yield Sample(
        "leadback_segmenter_events_inserted",
        "events written to ClickHouse",
        "counter",
        st.events_inserted,
    )
    yield Sample(
        "leadback_segmenter_batches_inserted", "batches written", "counter", st.batches_inserted
    )
    yield Sample(
        "leadback_segmenter_batches_replayed",
        "batches re-formed from an intent",
        "counter",
        st.batches_replayed,
    )
    yield Sample(
        "leadback_segmenter_insert_retries",
        "failed store calls retried",
        "counter",
        st.insert_retries,
    )
    yield Sample(
        "leadback_segmenter_events_quarantined",
        "rows sent to the invalid topic",
        "counter",
        st.events_quarantined,
    )
    yield Sample(
        "leadback_segmenter_last_insert_seconds",
        "duration of the last flush",
        "gauge",
        st.last_insert_seconds,
    )


def build_segmenter(
    settings: Settings, store: ClickHouseStore, bootstrap: str, invalid: KafkaRecordProducer
) -> Segmenter:
    """A segmenter on the configured topic whose rejected rows go to the invalid topic."""

    async def send_invalid(key: bytes | None, value: bytes) -> None:
        try:
            await (await invalid.send(settings.kafka.topic_invalid, key, value))
        except BrokerUnavailableError as exc:
            log.error("could not publish an invalid row", error=str(exc))
            raise

    def consumer(topic: str, **kwargs: Any) -> GroupConsumer:
        return GroupConsumer(topic, **kwargs, **common_options(settings.kafka, bootstrap))

    return Segmenter(
        settings.segmenter,
        topic=settings.kafka.topic_events,
        store=store,
        consumer_factory=consumer,
        invalid_sink=send_invalid,
    )


async def run_segmenter(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then flush, commit and leave the group."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bootstrap, embedded = resolve_bootstrap(settings)
    store = ClickHouseStore(settings.clickhouse)
    await migrate(store)
    invalid = KafkaRecordProducer(**producer_options(settings.kafka, bootstrap, embedded=embedded))
    await invalid.start()
    seg = build_segmenter(settings, store, bootstrap, invalid)
    if settings.segmenter.metrics_port:
        registry = CollectorRegistry()
        registry.register(CallbackCollector(lambda: _samples(seg)))
        start_http_server(
            settings.segmenter.metrics_port, settings.segmenter.metrics_host, registry=registry
        )
    log.info(
        "segmenter started",
        bootstrap=bootstrap,
        group=settings.segmenter.group_id,
        clickhouse=settings.clickhouse.url.split("@")[-1],
    )
    try:
        await seg.run(stop)
    finally:
        await invalid.stop()
        await store.close()
        log.info("segmenter stopped", **seg.stats.__dict__)
