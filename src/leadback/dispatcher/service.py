"""Run the dispatcher: beside the segmenter in the process that owns chDB (embedded), or as
its own consumer group over ClickHouse on HTTP (``leadback dispatcher``)."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import CollectorRegistry, start_http_server

from leadback.dispatcher.member import Dispatcher
from leadback.dispatcher.metrics import dispatcher_samples
from leadback.identity.contacts import contact_cipher
from leadback.kafka.config import producer_options, resolve_bootstrap
from leadback.kafka.consumer import group_consumer_factory
from leadback.kafka.producer import RecordProducer
from leadback.logs import get_logger
from leadback.metrics import CallbackCollector
from leadback.settings import Settings
from leadback.signed_tokens import token_signer
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

log = get_logger(__name__)


def build_dispatcher(
    settings: Settings,
    store: ClickHouseStore,
    bootstrap: str,
    dead_producer: RecordProducer,
    *,
    embedded: bool = False,
) -> Dispatcher:
    """A dispatcher member on the change topic (``embedded``: the embedded broker)."""

    consumer = group_consumer_factory(
        settings.kafka,
        settings.kafka.topic_changes,
        settings.dispatcher.group_id,
        bootstrap,
        embedded=embedded,
    )

    return Dispatcher(
        settings.dispatcher,
        topic=settings.kafka.topic_changes,
        store=store,
        consumer_factory=consumer,
        cipher=contact_cipher(settings),
        signer=token_signer(settings),
        dead_producer=dead_producer,
        dead_topic=settings.kafka.topic_dead,
    )


async def run_dispatcher(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run one member until SIGTERM/SIGINT (or ``stop``)."""
    from leadback.kafka.producer import KafkaRecordProducer

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bootstrap, embedded = resolve_bootstrap(settings)
    store = ClickHouseStore(settings.clickhouse)
    await migrate(store)
    producer = KafkaRecordProducer(**producer_options(settings.kafka, bootstrap, embedded=embedded))
    await producer.start()
    dispatcher = build_dispatcher(settings, store, bootstrap, producer, embedded=embedded)
    if settings.dispatcher.metrics_port:
        registry = CollectorRegistry()
        registry.register(CallbackCollector(lambda: dispatcher_samples(dispatcher)))
        start_http_server(
            settings.dispatcher.metrics_port, settings.dispatcher.metrics_host, registry=registry
        )
    log.info(
        "dispatcher started",
        bootstrap=bootstrap,
        group=settings.dispatcher.group_id,
        clickhouse=settings.clickhouse.url.split("@")[-1],
    )
    try:
        await dispatcher.run(stop)
    finally:
        await producer.stop()
        await store.close()
        log.info("dispatcher stopped", **dispatcher.stats.__dict__)
