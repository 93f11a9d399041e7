"""Run one segmenter process: settings -> ClickHouse (migrations) -> consumer group loop."""

from __future__ import annotations

import asyncio
import gc
import signal

import uvicorn
from prometheus_client import CollectorRegistry, start_http_server

from leadback.asgi_server import EmbeddedServer
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.publisher import QueuedChangePublisher
from leadback.errors import BrokerUnavailableError
from leadback.kafka.config import (
    producer_options,
    rdkafka_config,
    resolve_bootstrap,
)
from leadback.kafka.consumer import group_consumer_factory
from leadback.kafka.producer import KafkaRecordProducer
from leadback.kafka.rdkafka import RdKafkaProducer
from leadback.logs import get_logger
from leadback.metrics import CallbackCollector
from leadback.segmenter.member import Segmenter
from leadback.segmenter.metrics import samples
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

log = get_logger(__name__)

CHANGES_TIMEOUT_S = 30.0  # a batch of changes not acknowledged by then waits for the sweep


def change_producer(settings: Settings, bootstrap: str, *, embedded: bool) -> RdKafkaProducer:
    """The librdkafka producer the audience changes go out with (started; its own, since the
    publisher counts its pending records)."""
    producer = RdKafkaProducer(
        rdkafka_config(
            settings.kafka,
            bootstrap,
            embedded=embedded,
            queue_max_events=500_000,
            queue_max_bytes=256 * 1024 * 1024,
            stall_s=CHANGES_TIMEOUT_S,
        )
    )
    producer.start(on_failure=lambda *_: None)  # failures are counted per publish call
    return producer


def tune_collector() -> None:
    """The garbage collector for rounds, once start-up is done (the benchmarks that replay
    rounds call it too)."""
    # Rounds allocate rows by the thousand: with the default thresholds the collector ran
    # every few hundred objects and took ~15% of the process's CPU at 5,000 events/s (perf).
    # What start-up built lives forever: out of the scans.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def build_engine(
    settings: Settings, store: ClickHouseStore, producer: RdKafkaProducer
) -> AudienceEngine:
    """The audience engine publishing to the change topic through ``producer`` (its own, from
    :func:`change_producer`)."""
    publisher = QueuedChangePublisher(
        producer, settings.kafka.topic_changes, timeout_s=CHANGES_TIMEOUT_S
    )
    return AudienceEngine(store, publisher)


def build_segmenter(
    settings: Settings,
    store: ClickHouseStore,
    bootstrap: str,
    invalid: KafkaRecordProducer,
    engine: AudienceEngine | None = None,
    *,
    embedded: bool = False,
) -> Segmenter:
    """A segmenter on the configured topic whose rejected rows go to the invalid topic
    (``embedded``: ``bootstrap`` is the embedded broker)."""

    async def send_invalid(key: bytes | None, value: bytes) -> None:
        try:
            await (await invalid.send(settings.kafka.topic_invalid, key, value))
        except BrokerUnavailableError as exc:
            log.error("could not publish an invalid row", error=str(exc))
            raise

    consumer = group_consumer_factory(
        settings.kafka,
        settings.kafka.topic_events,
        settings.segmenter.group_id,
        bootstrap,
        embedded=embedded,
    )

    return Segmenter(
        settings.segmenter,
        topic=settings.kafka.topic_events,
        store=store,
        consumer_factory=consumer,
        invalid_sink=send_invalid,
        observer=engine,
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
    producer = KafkaRecordProducer(**producer_options(settings.kafka, bootstrap, embedded=embedded))
    await producer.start()
    changes = change_producer(settings, bootstrap, embedded=embedded)
    engine = build_engine(settings, store, changes) if settings.audiences.enabled else None
    if engine is not None:
        await engine.start()
    seg = build_segmenter(settings, store, bootstrap, producer, engine, embedded=embedded)
    dispatcher = None
    dispatch_store: ClickHouseStore | None = None
    if settings.dispatcher.enabled and settings.clickhouse.url.startswith("chdb://"):
        # chDB allows one process per directory: the dispatcher runs here, beside the
        # segmenter. Over HTTP it runs apart (`leadback dispatcher`).
        from leadback.dispatcher.metrics import dispatcher_samples
        from leadback.dispatcher.service import build_dispatcher

        # A client of its own: on the rounds' client its reads (a definitions check per batch
        # of changes, its plans) queued between the rounds' statements.
        dispatch_store = ClickHouseStore(settings.clickhouse)
        await dispatch_store.connect()
        dispatcher = build_dispatcher(
            settings, dispatch_store, bootstrap, producer, embedded=embedded
        )
    if settings.segmenter.metrics_port:
        registry = CollectorRegistry()
        registry.register(CallbackCollector(lambda: samples(seg, engine)))
        if dispatcher is not None:
            registry.register(CallbackCollector(lambda: dispatcher_samples(dispatcher)))
        start_http_server(
            settings.segmenter.metrics_port, settings.segmenter.metrics_host, registry=registry
        )
    log.info(
        "segmenter started",
        bootstrap=bootstrap,
        group=settings.segmenter.group_id,
        clickhouse=settings.clickhouse.url.split("@")[-1],
        audiences=engine is not None,
    )
    side: list[asyncio.Task[None]] = []
    if engine is not None:
        # Timer passes and rule changes run on the member that owns partition 0, so a scaled-out
        # group evaluates them once.
        side.append(
            asyncio.create_task(
                engine.run(
                    stop,
                    interval_s=settings.audiences.timer_interval_ms / 1000,
                    leader=lambda: 0 in seg.assignment,
                )
            )
        )
        if settings.admin.port:
            side.append(asyncio.create_task(_serve_admin(settings, engine, store, stop)))
    if dispatcher is not None:
        side.append(asyncio.create_task(dispatcher.run(stop)))
        log.info("dispatcher started beside the segmenter", group=settings.dispatcher.group_id)
    tune_collector()
    try:
        await seg.run(stop)
    finally:
        stop.set()
        for task in side:
            await task
        if engine is not None:
            # After the stream loop: its last round reads on the engine's clients.
            await engine.close()
        await producer.stop()
        changes.close()
        if dispatch_store is not None:
            await dispatch_store.close()
        await store.close()
        log.info("segmenter stopped", **seg.stats.__dict__)


async def _serve_admin(
    settings: Settings, engine: AudienceEngine, store: ClickHouseStore, stop: asyncio.Event
) -> None:
    """The admin API in this process: with chDB, only this process may open the store."""
    from leadback.admin.app import create_admin_app

    app = create_admin_app(settings, engine, store)
    config = uvicorn.Config(
        app,
        host=settings.admin.host,
        port=settings.admin.port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    log.info("admin API listening", url=f"http://{settings.admin.host}:{settings.admin.port}")
    await stop.wait()
    server.should_exit = True
    await task
