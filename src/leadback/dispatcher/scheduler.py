"""The timer pass and the outcomes: due steps -> decisions -> messages -> results -> ledger.

A pass (on the partitions this member owns) takes the pending steps that came due, loads the
people in bulk, and decides each step in due order: cancelled (campaign gone, no longer a
member), suppressed, no consent, no address, deferred (quiet hours; a cap with ``on_cap:
delay``), capped, or sent. For a send it writes the intent (``sending`` in the ledger) before
handing the message to its destination's queue. Results come back through :meth:`on_results`
and are written in batches: ``sent``; ``retrying`` with the step due again after a backoff;
``failed`` (and the dead topic) when the error is permanent or the attempts are spent.

**At most once, and the window.** A step is sent only by the member owning its partition, and
only once while it is in flight here. The window in which a message can go twice: a crash (or
a partition moving) after the provider accepted it and before its outcome is written (the
provider call plus at most ``OUTCOME_FLUSH_S``). The step is still pending then, so the next
owner sends it again, with the same ``delivery_id`` (webhook ``webhook-id``, e-mail
``Message-ID``), so receivers that deduplicate drop it. Nothing is lost: a step is done only
once an outcome is written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

from leadback import failpoints
from leadback.campaigns.definitions import QuietHours
from leadback.campaigns.templates import TemplateRenderError
from leadback.clock import Clock
from leadback.destinations.base import (
    Delivered,
    DestinationError,
    DestinationUnavailable,
    Message,
    RecipientGone,
    SendResult,
)
from leadback.destinations.config import DestinationConfig
from leadback.dispatcher.book import Book, LiveCampaign
from leadback.dispatcher.compose import Composer, address
from leadback.dispatcher.dead_letters import DeadLetters, DeadRecord, dead_record
from leadback.dispatcher.feedback import FeedbackWriter, Suppression
from leadback.dispatcher.ledger import DeliveryRow, Ledger
from leadback.dispatcher.planner import Revisions
from leadback.dispatcher.policy import (
    cap_wait_ms,
    quiet_until_ms,
    retry_delay_s,
    zone,
)
from leadback.dispatcher.recipients import Person, RecipientLoader
from leadback.dispatcher.sender import DestinationQueue
from leadback.dispatcher.steps import DONE, PENDING, StepRow, StepStore, row_delivery_id
from leadback.errors import ConfigError, LeadbackError
from leadback.logs import get_logger
from leadback.settings import DispatcherSettings

log = get_logger(__name__)

OUTCOME_FLUSH_S = 0.05
PASS_LIMIT = 5_000
MAX_BACKLOG_PER_DESTINATION = 20_000


@dataclass
class InFlight:
    row: StepRow
    campaign_version: int
    channel: str
    destination: str
    forget: dict[str, str]  # how to forget the address if it is gone
    traits: dict[str, object]


@dataclass
class SchedulerStats:
    passes: int = 0
    decided: dict[str, int] = field(default_factory=dict)  # status -> count
    outcomes: dict[str, int] = field(default_factory=dict)  # channel:status -> count
    latencies_ms: list[float] = field(default_factory=list)  # change -> provider accepted
    dead: int = 0

    def count(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


@dataclass
class _Pass:
    now: int
    steps: list[StepRow] = field(default_factory=list)
    ledger: list[DeliveryRow] = field(default_factory=list)
    dead: list[DeadRecord] = field(default_factory=list)
    messages: dict[str, list[Message]] = field(default_factory=dict)
    flights: dict[str, InFlight] = field(default_factory=dict)


class Scheduler:
    """Decides due steps and records what became of them."""

    def __init__(
        self,
        *,
        book: Book,
        steps: StepStore,
        ledger: Ledger,
        recipients: RecipientLoader,
        feedback: FeedbackWriter,
        dead: DeadLetters,
        composer: Composer,
        revisions: Revisions,
        lock: asyncio.Lock,
        settings: DispatcherSettings,
        clock: Clock,
        assignment: Callable[[], set[int]],
        rng: random.Random | None = None,
    ) -> None:
        self._book = book
        self._steps = steps
        self._ledger = ledger
        self._recipients = recipients
        self._feedback = feedback
        self._dead = dead
        self._composer = composer
        self._rev = revisions
        self._lock = lock
        self._settings = settings
        self._clock = clock
        self._assignment = assignment
        self._rng = rng or random.Random()
        self.queues: dict[str, DestinationQueue] = {}
        self._queue_configs: dict[str, DestinationConfig] = {}
        self.in_flight: dict[str, InFlight] = {}
        self._results: list[tuple[Message, SendResult]] = []
        self._results_ready = asyncio.Event()
        self.stats = SchedulerStats()

    # -- the pass -----------------------------------------------------------------------

    async def run_pass(self) -> int:
        """One timer pass; returns how many steps it decided."""
        owned = self._assignment()
        if not owned:
            return 0
        await self._book.refresh()
        async with self._lock:
            p = _Pass(self._rev.now_ms())
            # Steps in flight are still pending and, being due earlier, come first: read past
            # them, or a destination with PASS_LIMIT steps in flight starves every other one.
            due = await self._steps.due(owned, p.now, PASS_LIMIT + len(self.in_flight))
            due = [r for r in due if _did(r) not in self.in_flight][:PASS_LIMIT]
            by_site: dict[str, list[StepRow]] = {}
            for r in due:
                by_site.setdefault(r.site_id, []).append(r)
            for site, rows in by_site.items():
                await self._decide_site(site, rows, p)
            # The intents are written before any message is handed to a queue.
            await self._ledger.record(p.ledger)
            await self._steps.write(p.steps)
            if p.dead:
                await self._dead.publish(p.dead)
                self.stats.dead += len(p.dead)
            self.in_flight.update(p.flights)
            if p.flights:
                failpoints.hit("dispatcher.after_intent")
            for destination, messages in p.messages.items():
                self._queue(destination).submit(messages)
        self.stats.passes += 1
        return len(due)

    async def _decide_site(self, site: str, rows: list[StepRow], p: _Pass) -> None:
        persons = {r.person_id for r in rows}
        people = await self._recipients.load(site, persons, {r.audience_id for r in rows})
        policy = self._book.policies.get(site)
        windows = [c.per for c in (policy.channel_caps.values() if policy else ())]
        for r in rows:
            live = self._book.campaign(site, r.campaign_id)
            if live is not None and live.spec.frequency is not None:
                windows.append(live.spec.frequency.per)
        sent_by_channel: dict[tuple[str, str], list[int]] = {}
        sent_by_campaign: dict[tuple[str, str], list[int]] = {}
        if windows:
            for s in await self._ledger.recent_sends(site, persons, p.now - max(windows)):
                sent_by_channel.setdefault((s.person_id, s.channel), []).append(s.at_ms)
                sent_by_campaign.setdefault((s.person_id, s.campaign_id), []).append(s.at_ms)
        for r in sorted(rows, key=lambda r: (r.due_at, r.step)):
            self._decide(r, people[r.person_id], p, sent_by_channel, sent_by_campaign)

    def _decide(
        self,
        r: StepRow,
        person: Person,
        p: _Pass,
        sent_by_channel: dict[tuple[str, str], list[int]],
        sent_by_campaign: dict[tuple[str, str], list[int]],
    ) -> None:
        live = self._book.campaign(r.site_id, r.campaign_id)
        if live is None or not live.spec.enabled or r.step >= len(live.spec.steps):
            self._finish(r, p, live, "", "", "cancelled", "campaign_gone")
            return
        spec = live.spec
        step = spec.steps[r.step]
        destination = step.destination
        kind = self._book.channel_kind(destination)
        if kind is None:
            self._finish(r, p, live, "", destination, "failed", "destination_gone", dead=True)
            return
        if self.backlog(destination) + len(p.messages.get(destination, ())) >= (
            MAX_BACKLOG_PER_DESTINATION
        ):
            return  # stays pending: a slow destination's work waits in the store, not here
        state, entered, products = person.memberships.get(r.audience_id, ("out", 0, []))
        if state != "in" or entered != r.change_at:
            self._finish(r, p, live, kind, destination, "cancelled", "not_a_member")
            return
        why = person.suppression(kind)
        if why is not None:
            self._finish(r, p, live, kind, destination, "suppressed", why)
            return
        if not person.consent:
            self._finish(r, p, live, kind, destination, "no_consent", "marketing")
            return
        found = address(self._recipients, person, kind, destination)
        if found is None:
            self._finish(r, p, live, kind, destination, "no_address", kind)
            return
        recipient, forget = found
        quiet = self._quiet_hours(live, person)
        if quiet is not None:
            until = quiet_until_ms(p.now, quiet[0], quiet[1])
            if until:
                p.steps.append(r.moved(self._rev.next(), due_at=until, reason="quiet_hours"))
                self.stats.count(self.stats.decided, "deferred")
                return
        wait = 0
        if spec.frequency is not None:
            wait = cap_wait_ms(
                sent_by_campaign.get((r.person_id, spec.id), []), spec.frequency, p.now
            )
        policy = self._book.policies.get(r.site_id)
        channel_cap = policy.channel_caps.get(kind) if policy else None  # type: ignore[call-overload]
        if channel_cap is not None:
            wait = max(
                wait,
                cap_wait_ms(sent_by_channel.get((r.person_id, kind), []), channel_cap, p.now),
            )
        if wait:
            if spec.on_cap == "delay":
                p.steps.append(r.moved(self._rev.next(), due_at=p.now + wait, reason="capped"))
                self.stats.count(self.stats.decided, "deferred")
            else:
                self._finish(r, p, live, kind, destination, "capped", "frequency")
            return
        try:
            content = self._composer.content(spec, r.step, step, kind, person, products)
        except TemplateRenderError as exc:
            self._finish(r, p, live, kind, destination, "failed", exc.detail, dead=True)
            return
        did = _did(r)
        attempt = r.attempt + 1
        p.ledger.append(self._row(r, live, kind, destination, "sending", p.now, attempt=attempt))
        p.messages.setdefault(destination, []).append(
            Message(
                delivery_id=did,
                site_id=r.site_id,
                campaign_id=r.campaign_id,
                person_id=r.person_id,
                step=r.step,
                recipient=recipient,
                content=content,
                attempt=attempt,
            )
        )
        p.flights[did] = InFlight(r, live.version, kind, destination, forget, person.traits)
        sent_by_campaign.setdefault((r.person_id, spec.id), []).append(p.now)
        sent_by_channel.setdefault((r.person_id, kind), []).append(p.now)
        self.stats.count(self.stats.decided, "sending")

    def _quiet_hours(
        self, live: LiveCampaign, person: Person
    ) -> tuple[QuietHours, ZoneInfo] | None:
        policy = self._book.policies.get(live.spec.site)
        quiet = live.spec.quiet_hours
        if quiet == "none":
            return None
        if quiet is None:
            quiet = policy.quiet_hours if policy else None
        if not isinstance(quiet, QuietHours):
            return None
        trait = person.traits.get("timezone") or person.traits.get("tz")
        fallback = quiet.timezone or (policy.timezone if policy else None)
        tz = zone(
            trait if isinstance(trait, str) else None,
            fallback or self._settings.default_timezone,
        )
        return quiet, tz

    def _row(
        self,
        r: StepRow,
        live: LiveCampaign | None,
        kind: str,
        destination: str,
        status: str,
        at_ms: int,
        *,
        reason: str = "",
        attempt: int = 0,
        error: DestinationError | None = None,
        provider_id: str = "",
    ) -> DeliveryRow:
        return DeliveryRow(
            delivery_id=_did(r),
            site_id=r.site_id,
            campaign_id=r.campaign_id,
            campaign_version=live.version if live else 0,
            person_id=r.person_id,
            audience_id=r.audience_id,
            membership_version=r.membership_version,
            step=r.step,
            channel=kind,
            destination_id=destination,
            status=status,
            at_ms=at_ms,
            reason=reason,
            attempt=attempt,
            http_status=(error.status or 0) if error else 0,
            response=error.response if error else "",
            provider_id=provider_id,
            change_at=r.change_at,
            seq=self._rev.next(),
        )

    def _finish(
        self,
        r: StepRow,
        p: _Pass,
        live: LiveCampaign | None,
        kind: str,
        destination: str,
        status: str,
        reason: str,
        *,
        dead: bool = False,
    ) -> None:
        p.steps.append(r.moved(self._rev.next(), state=DONE, reason=status))
        p.ledger.append(self._row(r, live, kind, destination, status, p.now, reason=reason))
        if dead:
            p.dead.append(self._dead_record(r, kind, destination, reason, "", None, "", p.now))
        self.stats.count(self.stats.decided, status)

    def _dead_record(
        self,
        r: StepRow,
        kind: str,
        destination: str,
        reason: str,
        detail: str,
        status: int | None,
        response: str,
        at_ms: int,
    ) -> DeadRecord:
        return dead_record(
            delivery_id=_did(r),
            site_id=r.site_id,
            campaign_id=r.campaign_id,
            person_id=r.person_id,
            step=r.step,
            channel=kind,
            destination_id=destination,
            reason=reason,
            detail=detail,
            http_status=status,
            response=response,
            attempts=r.attempt + 1,
            at_ms=at_ms,
        )

    # -- queues -------------------------------------------------------------------------

    def _queue(self, destination: str) -> DestinationQueue:
        config = self._book.destinations[destination]
        queue = self.queues.get(destination)
        if queue is not None and self._queue_configs.get(destination) == config:
            return queue
        try:
            channel = self._book.channel(destination)
        except ConfigError:
            channel = _BrokenChannel(destination)  # every send comes back unavailable
        if queue is not None:
            asyncio.get_running_loop().create_task(queue.close())
        queue = DestinationQueue(
            destination,
            channel,
            concurrency=config.concurrency,
            rate_per_s=config.rate_per_s,
            timeout_s=config.timeout_s * 2,
            clock=self._clock,
            on_result=self.on_results,
        )
        self.queues[destination] = queue
        self._queue_configs[destination] = config
        return queue

    def backlog(self, destination: str) -> int:
        queue = self.queues.get(destination)
        return queue.backlog if queue else 0

    # -- outcomes -----------------------------------------------------------------------

    async def on_results(self, results: Sequence[tuple[Message, SendResult]]) -> None:
        """A queue's results: kept until the next flush (never raises)."""
        self._results.extend(results)
        self._results_ready.set()

    async def run_outcomes(self, stop: asyncio.Event) -> None:
        """Write results in batches until ``stop``; a failed write is retried."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(0.5):
                    await self._results_ready.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(OUTCOME_FLUSH_S)  # gather a batch
            try:
                await self.flush_outcomes()
            except LeadbackError as exc:
                log.warning("could not record outcomes; retrying", error=str(exc))
                await asyncio.sleep(1.0)

    async def flush_outcomes(self) -> int:
        """Write the results received so far; returns how many."""
        results, self._results = self._results, []
        self._results_ready.clear()
        if not results:
            return 0
        try:
            async with self._lock:  # a pass must not see a step between its write and pop
                await self._record_outcomes(results)
        except BaseException:
            self._results[:0] = results  # kept for the next try
            self._results_ready.set()
            raise
        return len(results)

    async def _record_outcomes(self, results: Sequence[tuple[Message, SendResult]]) -> None:
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
                    self._row(
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
                self.stats.latencies_ms.append(now - r.change_at)
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
                    self._row(
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
                self._row(
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
            dead.append(
                self._dead_record(
                    r, kind, dest, error.reason, error.detail, error.status, error.response, now
                )
            )
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

    async def close(self) -> None:
        for queue in self.queues.values():
            await queue.close()
        self.queues.clear()


def _did(r: StepRow) -> str:
    return row_delivery_id(r)


class _BrokenChannel:
    """A destination whose channel cannot be built (a secret is missing): every message comes
    back unavailable, so it is retried with backoff and reaches the dead topic in the end."""

    kind: Final = "webhook"
    max_batch = 100

    def __init__(self, destination: str) -> None:
        self._destination = destination

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        error = DestinationUnavailable(
            "destination_misconfigured", f"destination {self._destination!r} cannot be built"
        )
        return [error] * len(messages)

    async def aclose(self) -> None:
        return None
