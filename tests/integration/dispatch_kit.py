"""Dispatcher tests: the audience engine and a dispatcher on one manual clock, real broker
and engine, and a fake channel kind (registered as ``webhook``) that records what it gets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

import orjson
import yaml

from leadback.audiences.engine import AudienceEngine
from leadback.audiences.publisher import QueuedChangePublisher
from leadback.audiences.rules import parse_audiences
from leadback.campaigns.document import parse_document
from leadback.campaigns.repository import CampaignRepository
from leadback.clock import ManualClock
from leadback.destinations import registry
from leadback.destinations.base import Delivered, Message, SendResult
from leadback.destinations.config import ChannelDeps, DestinationConfig
from leadback.dispatcher.member import Dispatcher
from leadback.events import CanonicalEvent
from leadback.identity.contacts import ContactCipher
from leadback.kafka.config import producer_options
from leadback.kafka.consumer import group_consumer_factory
from leadback.kafka.producer import KafkaRecordProducer
from leadback.segmenter.service import change_producer
from leadback.settings import Settings
from leadback.signed_tokens import TokenSigner
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import encoded


class FakeConfig(DestinationConfig):
    kind: Literal["webhook"] = "webhook"
    name: str = "fake"


class FakeChannel:
    """Records messages; ``answer`` decides each result (default: delivered)."""

    kind: Literal["webhook"] = "webhook"
    max_batch = 50

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: list[Message] = []
        self.answer: Callable[[Message], SendResult] = lambda m: Delivered(provider_id="ok")
        self.delay_s = 0.0

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.messages.extend(messages)
        return [self.answer(m) for m in messages]

    async def aclose(self) -> None:
        return None


CHANNELS: dict[str, FakeChannel] = {}


def _build(config: FakeConfig, deps: ChannelDeps) -> FakeChannel:
    channel = CHANNELS.setdefault(config.name, FakeChannel(config.name))
    return channel


@contextlib.contextmanager
def fake_channels() -> Iterator[dict[str, FakeChannel]]:
    """The ``webhook`` kind replaced by :class:`FakeChannel` while the block runs."""
    CHANNELS.clear()
    registry.register("webhook", FakeConfig, _build)
    try:
        yield CHANNELS
    finally:
        registry._extra.pop("webhook", None)
        CHANNELS.clear()


class Harness:
    def __init__(
        self,
        settings: Settings,
        store: ClickHouseStore,
        engine: AudienceEngine,
        dispatcher: Dispatcher,
        clock: ManualClock,
        cipher: ContactCipher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.dispatcher = dispatcher
        self.clock = clock
        self.cipher = cipher
        self.batches = 0

    async def send(self, *events: CanonicalEvent) -> None:
        """Insert like the segmenter does, then evaluate the batch (changes to the topic)."""
        self.batches += 1
        token = f"test-batch-{self.batches}"
        keys, values = encoded(events)
        await self.store.insert_json_rows("events", b"\n".join(values), dedup_token=token)
        await self.engine.on_batch(keys, values, token)

    async def later(self, seconds: float) -> None:
        """Time passes: the engine's and the dispatcher's timers run."""
        self.clock.advance(seconds)
        await self.engine.tick()
        await self.dispatcher.tick()

    async def settle(self) -> None:
        """Let queued sends finish and their outcomes be written."""
        for _ in range(200):
            await asyncio.sleep(0.02)
            if not self.dispatcher.scheduler.in_flight:
                break
        await self.dispatcher.scheduler.outcomes.flush()

    async def apply_audiences(self, text: str) -> None:
        for spec in parse_audiences(yaml.safe_load(text)):
            await self.engine.repository.put(spec)
        await self.engine.tick()

    async def apply_campaigns(self, text: str) -> None:
        repo = CampaignRepository(self.store, clock=self.clock)
        await repo.apply(parse_document(yaml.safe_load(text)), sites=None)
        await self.dispatcher.book.refresh()

    async def planned(self, n: int, timeout: float = 30) -> None:
        """Wait until the dispatcher has read ``n`` changes from the topic."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.dispatcher.stats.changes_seen < n:
            assert asyncio.get_running_loop().time() < deadline, (
                f"read {self.dispatcher.stats.changes_seen} changes of {n}"
            )
            await asyncio.sleep(0.05)

    async def statuses(self, campaign: str) -> dict[str, list[tuple[str, int]]]:
        """status -> [(person, step)], latest state per delivery."""
        out: dict[str, list[tuple[str, int]]] = {}
        for d in await self.dispatcher.ledger.query(campaign=campaign, limit=100_000):
            out.setdefault(d["status"], []).append((d["person"], int(d["step"])))
        return {k: sorted(v) for k, v in out.items()}


@contextlib.asynccontextmanager
async def harness(
    settings: Settings,
    store: ClickHouseStore,
    *,
    start: float = 1_800_000_000.0,
    cipher: ContactCipher | None = None,
    **dispatcher_settings: object,
) -> AsyncIterator[Harness]:
    await migrate(store)
    clock = ManualClock(start)
    bootstrap = settings.kafka.bootstrap
    changes = change_producer(settings, bootstrap, embedded=True)
    engine = AudienceEngine(
        store,
        QueuedChangePublisher(changes, settings.kafka.topic_changes, timeout_s=30),
        clock=clock,
    )
    await engine.start()
    dead = KafkaRecordProducer(**producer_options(settings.kafka, bootstrap, embedded=True))
    await dead.start()
    cipher = cipher or ContactCipher([ContactCipher.generate_key()])

    consumer = group_consumer_factory(
        settings.kafka,
        settings.kafka.topic_changes,
        settings.dispatcher.group_id,
        bootstrap,
        embedded=True,
    )

    dispatcher = Dispatcher(
        settings.dispatcher.model_copy(update={"timer_interval_ms": 60_000, **dispatcher_settings}),
        topic=settings.kafka.topic_changes,
        store=store,
        consumer_factory=consumer,
        cipher=cipher,
        signer=TokenSigner(b"k" * 32),
        dead_producer=dead,
        dead_topic=settings.kafka.topic_dead,
        clock=clock,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        for _ in range(600):
            if dispatcher.assignment:
                break
            await asyncio.sleep(0.05)
        yield Harness(settings, store, engine, dispatcher, clock, cipher)
    finally:
        stop.set()
        await task
        await dead.stop()
        changes.close()


def dead_records(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [orjson.loads(orjson.dumps(v)) for v in values]
