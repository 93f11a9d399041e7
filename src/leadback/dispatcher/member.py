"""One member of the dispatcher group: the stream loop planning steps from audience changes,
the timer pass sending what came due, and the writer of outcomes, sharing one lock."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httpx

from leadback.campaigns.repository import CampaignRepository
from leadback.clock import Clock, SystemClock
from leadback.destinations.config import ChannelDeps
from leadback.dispatcher.book import Book
from leadback.dispatcher.compose import Composer
from leadback.dispatcher.dead_letters import DeadLetters
from leadback.dispatcher.feedback import FeedbackWriter
from leadback.dispatcher.ledger import Ledger
from leadback.dispatcher.planner import ChangePlanner, Revisions
from leadback.dispatcher.recipients import RecipientLoader
from leadback.dispatcher.scheduler import PASS_LIMIT, Scheduler
from leadback.dispatcher.steps import StepStore
from leadback.dispatcher.telegram_webhooks import register_telegram_webhooks
from leadback.errors import RetryableError
from leadback.identity.contacts import ContactCipher
from leadback.kafka.producer import RecordProducer
from leadback.logs import get_logger
from leadback.service_settings import DispatcherSettings
from leadback.signed_tokens import TokenSigner
from leadback.store.client import ClickHouseStore
from leadback.stream.consumer import ConsumerFactory
from leadback.stream.loop import StreamLoop

log = get_logger(__name__)


@dataclass(frozen=True)
class DispatcherStats:
    """A snapshot for /metrics, logs and the benchmarks."""

    changes_seen: int
    enrolled: int
    cancelled: int
    passes: int
    decided: dict[str, int]
    outcomes: dict[str, int]
    in_flight: int
    dead: int
    backlog: dict[str, int]


class Dispatcher:
    """Audience changes in, messages out."""

    def __init__(
        self,
        settings: DispatcherSettings,
        *,
        topic: str,
        store: ClickHouseStore,
        consumer_factory: ConsumerFactory,
        cipher: ContactCipher,
        signer: TokenSigner,
        dead_producer: RecordProducer,
        dead_topic: str,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        clock = clock or SystemClock()
        self._settings = settings
        self._signer = signer
        self._webhooks_for = -1  # the book generation Telegram webhooks were set for
        self._clock = clock
        lock = asyncio.Lock()
        revisions = Revisions(clock)
        deps = ChannelDeps(
            clock=clock,
            transport=transport,
            allow_private_targets=settings.allow_private_targets,
            public_url=settings.public_url,
        )
        self.book = Book(CampaignRepository(store, clock=clock), deps)
        steps = StepStore(store)
        self.ledger = Ledger(store)
        feedback = FeedbackWriter(store)
        self._planner = ChangePlanner(self.book, steps, self.ledger, feedback, revisions, lock)
        self._loop = StreamLoop(
            settings,
            topic=topic,
            consumer_factory=consumer_factory,
            handler=self._planner,
            # The loop's pacing (flush interval, retries) is real time; decisions use ``clock``.
            clock=SystemClock(),
            name="dispatcher",
        )
        recipients = RecipientLoader(store, cipher)
        self.scheduler = Scheduler(
            book=self.book,
            steps=steps,
            ledger=self.ledger,
            recipients=recipients,
            feedback=feedback,
            dead=DeadLetters(dead_producer, dead_topic),
            composer=Composer(signer, settings.public_url, recipients),
            revisions=revisions,
            lock=lock,
            settings=settings,
            clock=clock,
            assignment=lambda: self._loop.assignment,
            rng=rng,
        )

    @property
    def assignment(self) -> set[int]:
        return self._loop.assignment

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, plan, send and record until ``stop``; then stop the queues."""
        await self.book.refresh(force=True)
        tasks = [
            asyncio.create_task(self._timer(stop), name="dispatcher-timer"),
            asyncio.create_task(self.scheduler.outcomes.run(stop), name="dispatcher-outcomes"),
        ]
        try:
            await self._loop.run(stop)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.scheduler.close()
            await self.book.close()

    async def _timer(self, stop: asyncio.Event) -> None:
        interval = self._settings.timer_interval_ms / 1000
        while not stop.is_set():
            try:
                decided = await self.scheduler.run_pass()
                if self.book.generation != self._webhooks_for and 0 in self.assignment:
                    self._webhooks_for = self.book.generation
                    await register_telegram_webhooks(
                        self.book, self._signer, self._settings.public_url
                    )
            except RetryableError as exc:
                log.warning("dispatch pass failed; retrying", error=str(exc))
                decided = 0
            if decided >= PASS_LIMIT:
                continue  # a full page: more is due now
            try:
                async with asyncio.timeout(interval):
                    await stop.wait()
            except TimeoutError:
                pass

    async def tick(self) -> int:
        """One timer pass and one outcome flush, now (tests drive time with a manual clock)."""
        decided = await self.scheduler.run_pass()
        await self.scheduler.outcomes.flush()
        return decided

    @property
    def stats(self) -> DispatcherStats:
        s = self.scheduler.stats
        return DispatcherStats(
            changes_seen=self._planner.changes_seen,
            enrolled=self._planner.enrolled,
            cancelled=self._planner.cancelled,
            passes=s.passes,
            decided=dict(s.decided),
            outcomes=dict(s.outcomes),
            in_flight=len(self.scheduler.in_flight),
            dead=s.dead,
            backlog={d: q.backlog for d, q in self.scheduler.queues.items()},
        )
