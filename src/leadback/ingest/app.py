"""The ingest ASGI app: the pixel on a raw fast path, everything else through FastAPI."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from leadback.clock import Clock, SystemClock
from leadback.enrich.bots import BotDetector
from leadback.identity.contacts import contact_cipher
from leadback.ingest.api import build_api
from leadback.ingest.context import IngestContext
from leadback.ingest.pixel import PIXEL_PATH, PixelHandler
from leadback.ingest.sites import SiteRegistry
from leadback.ingest.stats import IngestStats, ingest_samples
from leadback.kafka.delivery import Delivery
from leadback.logs import get_logger
from leadback.metrics import CallbackCollector
from leadback.settings import Settings
from leadback.signed_tokens import token_signer

log = get_logger(__name__)


class IngestApp:
    """ASGI callable: ``GET|HEAD /p.gif`` to :class:`PixelHandler`, the rest to FastAPI."""

    def __init__(self, pixel: PixelHandler, api: FastAPI, delivery: Delivery) -> None:
        self.pixel = pixel
        self.api = api
        self.delivery = delivery

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PIXEL_PATH
            and scope["method"] in ("GET", "HEAD")
        ):
            await self.pixel(scope, send)
            return
        await self.api(scope, receive, send)


def create_app(settings: Settings, delivery: Delivery, *, clock: Clock | None = None) -> IngestApp:
    """Build the ingest app around a :class:`Delivery` (started and closed by the lifespan).

    ``clock`` stamps every request (``received_at``, event ids); the system clock by default.
    """
    clock = clock or SystemClock()
    sites = SiteRegistry(settings.sites)
    stats = IngestStats()
    registry = CollectorRegistry()
    registry.register(CallbackCollector(lambda: ingest_samples(stats, delivery)))
    bots = BotDetector()  # one user-agent cache for the pixel and the API
    cipher = contact_cipher(settings)  # may create the embedded key file: once, here
    signer = token_signer(settings)  # may create the embedded key file: once, here
    ctx = IngestContext(settings, sites, delivery, stats, registry, bots, cipher, clock, signer)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await delivery.start()
        # Objects built at start-up live forever: keep them out of the collector's scans,
        # which otherwise show up as latency spikes under load.
        gc.collect()
        gc.freeze()
        log.info("ingest ready", sites=sorted(sites.known), ready=delivery.ready)
        try:
            yield
        finally:
            await delivery.close(settings.ingest.shutdown_timeout_s)

    api = build_api(ctx, lifespan)
    pixel = PixelHandler(settings, sites, delivery, stats, bots, cipher, clock)
    return IngestApp(pixel, api, delivery)
