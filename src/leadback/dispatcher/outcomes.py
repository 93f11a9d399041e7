"""The outcomes of provider calls, written in batches: ``sent``; ``retrying`` with the step due
again after a backoff; ``failed`` (and the dead topic) when the error is permanent or the
attempts are spent; what a provider said about a recipient (STOP, hard bounce, blocked bot,
gone push subscription) remembered through :class:`FeedbackWriter`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from leadback import failpoints
from leadback.destinations.base import (
    Delivered,
    DestinationUnavailable,
    Message,
    RecipientGone,
    SendResult,
)
from leadback.dispatcher.book import Book
from leadback.dispatcher.dead_letters import DeadLetters, DeadRecord
from leadback.dispatcher.feedback import FeedbackWriter, Suppression
from leadback.dispatcher.ledger import DeliveryRow, Ledger
from leadback.dispatcher.planner import Revisions
from leadback.dispatcher.policy import retry_delay_s
from leadback.dispatcher.records import DispatchStats, InFlight, Rows, dead_from
from leadback.dispatcher.steps import DONE, PENDING, StepRow, StepStore
from leadback.errors import LeadbackError
from leadback.logs import get_logger
from leadback.service_settings import DispatcherSettings

log = get_logger(__name__)

OUTCOME_FLUSH_S = 0.05


class OutcomeRecorder:
    """Keeps results until the next flush and writes them (under the dispatcher's lock)."""

    def __init__(
        self,
        *,
        book: Book,
        steps: StepStore,
        ledger: Ledger,
        feedback: FeedbackWriter,
        dead: DeadLetters,
        revisions: Revisions,
        lock: asyncio.Lock,
        settings: DispatcherSettings,
        in_flight: dict[str, InFlight],
        stats: DispatchStats,
        rng: random.Random,
    ) -> None:
        self._book = book
        self._steps = steps
        self._ledger = ledger
        self._feedback = feedback
        self._dead = dead
        self._rev = revisions
        self._rows = Rows(revisions)
        self._lock = lock
        self._settings = settings
        self.in_flight = in_flight
        self.stats = stats
        self._rng = rng
        self._results: list[tuple[Message, SendResult]] = []
        self._results_ready = asyncio.Event()

    async def on_results(self, results: Sequence[tuple[Message, SendResult]]) -> None:
        """A queue's results: kept until the next flush (never raises)."""
        self._results.extend(results)
        self._results_ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Write results in batches until ``stop``; a failed write is retried."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(0.5):
                    await self._results_ready.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(OUTCOME_FLUSH_S)  # gather a batch
            try:
                await self.flush()
            except LeadbackError as exc:
                log.warning("could not record outcomes; retrying", error=str(exc))
                await asyncio.sleep(1.0)

    async def flush(self) -> int:
        """Write the results received so far; returns how many."""
        results, self._results = self._results, []
        self._results_ready.clear()
        if not results:
            return 0
        try:
            async with self._lock:  # a pass must not see a step between its write and pop
                await self._record(results)
        except BaseException:
            self._results[:0] = results  # kept for the next try
            self._results_ready.set()
            raise
        return len(results)

    async def _record(self, results: Sequence[tuple[Message, SendResult]]) -> None:
        failpoints.hit("dispatcher.after_send")  # the window: accepted, outcome not written
        now = self._rev.now_ms()
        steps: list[StepRow] = []
        rows: list[DeliveryRow] = []
        dead: list[DeadRecord] = []
        suppress: list[Suppression] = []
        push_gone: dict[str, list[tuple[str, str]]] = {}
        chat_gone: dict[str, list[tuple[str, str]]] = {}
        done: list[str] = []
        for message, result in results:
            flight = self.in_flight.get(message.delivery_id)
            if flight is None:
                continue
            done.append(message.delivery_id)
            r, kind, dest = flight.row, flight.channel, flight.destination
            live = self._book.campaign(r.site_id, r.campaign_id)
            attempt = r.attempt + 1
            if isinstance(result, Delivered):
                steps.append(r.moved(self._rev.next(), state=DONE, reason="sent"))
                rows.append(
                    self._rows.delivery(
                        r,
                        live,
                        kind,
                        dest,
                        "sent",
                        now,
                        attempt=attempt,
                        provider_id=result.provider_id or "",
                    )
                )
                self.stats.count(self.stats.outcomes, f"{kind}:sent")
                continue
            error = result
            retry = isinstance(error, DestinationUnavailable)
            if retry and attempt < self._settings.max_attempts:
                assert isinstance(error, DestinationUnavailable)
                delay = retry_delay_s(
                    attempt,
                    initial_s=self._settings.backoff_initial_s,
                    max_s=self._settings.backoff_max_s,
                    retry_after=error.retry_after,
                    rng=self._rng,
                )
                steps.append(
                    r.moved(
                        self._rev.next(),
                        state=PENDING,
                        reason=error.reason,
                        attempt=attempt,
                        due_at=now + int(delay * 1000),
                    )
                )
                rows.append(
                    self._rows.delivery(
                        r,
                        live,
                        kind,
                        dest,
                        "retrying",
                        now,
                        reason=error.reason,
                        attempt=attempt,
                        error=error,
                    )
                )
                self.stats.count(self.stats.outcomes, f"{kind}:retrying")
                continue
            steps.append(r.moved(self._rev.next(), state=DONE, reason="failed"))
            rows.append(
                self._rows.delivery(
                    r,
                    live,
                    kind,
                    dest,
                    "failed",
                    now,
                    reason=error.reason,
                    attempt=attempt,
                    error=error,
                )
            )
            dead.append(dead_from(r, kind, dest, error.reason, now, error))
            self.stats.count(self.stats.outcomes, f"{kind}:failed")
            if isinstance(error, RecipientGone):
                self._forget(error, flight, suppress, push_gone, chat_gone)
        await self._ledger.record(rows)
        await self._steps.write(steps)
        await self._feedback.suppress(suppress, at_ms=now)
        for site, subs in push_gone.items():
            await self._feedback.push_gone(site, subs, at_ms=now)
        for site, chats in chat_gone.items():
            await self._feedback.chat_gone(site, chats, at_ms=now)
        if dead:
            await self._dead.publish(dead)
            self.stats.dead += len(dead)
        for did in done:
            self.in_flight.pop(did, None)
        failpoints.hit("dispatcher.after_outcome")

    def _forget(
        self,
        error: RecipientGone,
        flight: InFlight,
        suppress: list[Suppression],
        push_gone: dict[str, list[tuple[str, str]]],
        chat_gone: dict[str, list[tuple[str, str]]],
    ) -> None:
        r, kind = flight.row, flight.channel
        if error.why == "subscription_gone":
            push_gone.setdefault(r.site_id, []).append(
                (flight.forget["visitor"], flight.forget["endpoint_sha256"])
            )
        elif error.why == "blocked" and kind == "telegram":
            chat_gone.setdefault(r.site_id, []).append(
                (flight.forget["visitor"], flight.destination)
            )
        elif error.why in ("unsubscribed", "hard_bounce", "blocked", "invalid_address"):
            suppress.append(Suppression(r.site_id, f"person:{r.person_id}", kind, error.why))
            contact = {"email": "email", "sms": "phone"}.get(kind)
            digest = flight.traits.get(f"{contact}_sha256") if contact else None
            if isinstance(digest, str):
                suppress.append(Suppression(r.site_id, f"{contact}:{digest}", kind, error.why))
