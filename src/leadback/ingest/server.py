"""Run the ingest service with uvicorn (uvloop + httptools), one or several worker processes.

The pixel takes the inline fast path when the installed uvicorn allows it
(:mod:`leadback.ingest.fast_path`, logged at start), else uvicorn's own protocol.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from leadback.ingest.app import IngestApp, create_app
from leadback.ingest.fast_path import detect_fast_path, log_fast_path
from leadback.kafka.config import rdkafka_config, resolve_bootstrap
from leadback.kafka.delivery import Delivery
from leadback.kafka.rdkafka import RdKafkaProducer
from leadback.kafka.spool import Spool
from leadback.logs import configure_logging
from leadback.settings import Settings, load_settings


def build_delivery(settings: Settings) -> Delivery:
    """Producer (with its bounded memory queue) + disk spool, as configured."""
    bootstrap, embedded = resolve_bootstrap(settings)
    ing = settings.ingest
    producer = RdKafkaProducer(
        rdkafka_config(
            settings.kafka,
            bootstrap,
            embedded=embedded,
            queue_max_events=ing.queue_max_events,
            queue_max_bytes=ing.queue_max_bytes,
            stall_s=ing.broker_stall_s,
        )
    )
    spool = Spool.open(
        settings.spool_dir, max_bytes=ing.spool_max_bytes, segment_bytes=ing.spool_segment_bytes
    )
    return Delivery(producer, spool, stall_s=ing.broker_stall_s)


def app_factory() -> IngestApp:
    """Entry point for uvicorn workers: each process reads the settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings, build_delivery(settings))


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    fast_path = detect_fast_path()
    log_fast_path(fast_path)
    return {
        "host": settings.ingest.host,
        "port": settings.ingest.port,
        "loop": "uvloop",
        "http": fast_path.protocol,
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "server_header": False,
        "date_header": False,
        # X-Forwarded-* is believed only from LEADBACK_INGEST_TRUSTED_PROXIES, by us.
        "proxy_headers": False,
        "timeout_graceful_shutdown": int(settings.ingest.shutdown_timeout_s),
        "backlog": 4096,
    }


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    """uvicorn settings for ingest (tests use it to run the server in process)."""
    return uvicorn.Config(app, **_uvicorn_options(settings))  # type: ignore[arg-type]


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT: stop accepting, answer what is in flight, flush, exit."""
    if settings.ingest.workers > 1:
        uvicorn.run(
            "leadback.ingest.server:app_factory",
            factory=True,
            workers=settings.ingest.workers,
            **_uvicorn_options(settings),
        )
        return
    uvicorn.Server(uvicorn_config(settings, create_app(settings, build_delivery(settings)))).run()
