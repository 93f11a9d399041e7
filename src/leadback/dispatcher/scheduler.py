"""The timer pass and the outcomes: due steps -> decisions -> messages -> results -> ledger.

A pass (on the partitions this member owns) takes the pending steps that came due, loads the
people in bulk, and decides each step in due order: cancelled (campaign gone, no longer a
member), suppressed, no consent, no address, deferred (quiet hours; a cap with ``on_cap:
delay``), capped, or sent. For a send it writes the intent (``sending`` in the ledger) before
handing the message to its destination's queue. Results come back to
:class:`~leadback.dispatcher.outcomes.OutcomeRecorder`, which writes them in batches.

**At most once, and the window.** A step is sent only by the member owning its partition, and
only once while it is in flight here. The window in which a message can go twice: a crash (or
a partition moving) after the provider accepted it and before its outcome is written (the
provider call plus at most ``outcomes.OUTCOME_FLUSH_S``). The step is still pending then, so
the next owner sends it again, with the same ``delivery_id`` (webhook ``webhook-id``, e-mail
``Message-ID``), so receivers that deduplicate drop it. Nothing is lost: a step is done only
once an outcome is written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from leadback import failpoints
from leadback.campaigns.definitions import QuietHours
from leadback.campaigns.templates import TemplateRenderError
from leadback.clock import Clock
from leadback.destinations.base import (
    Message,
)
from leadback.destinations.config import DestinationConfig
from leadback.dispatcher.book import Book, LiveCampaign
from leadback.dispatcher.compose import Composer, address
from leadback.dispatcher.dead_letters import DeadLetters, DeadRecord
from leadback.dispatcher.feedback import FeedbackWriter
from leadback.dispatcher.ledger import DeliveryRow, Ledger
from leadback.dispatcher.outcomes import OutcomeRecorder
from leadback.dispatcher.planner import Revisions
from leadback.dispatcher.policy import (
    cap_wait_ms,
    quiet_until_ms,
    zone,
)
from leadback.dispatcher.recipients import Person, RecipientLoader
from leadback.dispatcher.records import DispatchStats, InFlight, Rows, dead_from
from leadback.dispatcher.sender import BrokenChannel, DestinationQueue
from leadback.dispatcher.steps import (
    DONE,
    ORPHAN_AFTER_MS,
    PENDING,
    SENDING,
    StepRow,
    StepStore,
    row_delivery_id,
)
from leadback.errors import ConfigError
from leadback.logs import get_logger
from leadback.service_settings import DispatcherSettings

log = get_logger(__name__)

PASS_LIMIT = 5_000
STALE_CHECK_MS = 60_000
MAX_BACKLOG_PER_DESTINATION = 20_000


@dataclass
class _Pass:
    now: int
    steps: list[StepRow] = field(default_factory=list)
    ledger: list[DeliveryRow] = field(default_factory=list)
    dead: list[DeadRecord] = field(default_factory=list)
    messages: dict[str, list[Message]] = field(default_factory=dict)
    flights: dict[str, InFlight] = field(default_factory=dict)
    skipped: int = 0  # left pending: their destination's queue is full


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
        self._rows = Rows(revisions)
        self._lock = lock
        self._settings = settings
        self._clock = clock
        self._assignment = assignment
        self._rng = rng or random.Random()
        # Partition -> when this member got it. Steps marked `sending` before then were left
        # by an earlier process (or owner): their outcome is unknown, they are sent again.
        self._assigned_at: dict[int, int] = {}
        self._stale_check_at = 0
        self.queues: dict[str, DestinationQueue] = {}
        self._queue_configs: dict[str, DestinationConfig] = {}
        self.in_flight: dict[str, InFlight] = {}
        self.stats = DispatchStats()
        self.outcomes = OutcomeRecorder(
            book=book,
            steps=steps,
            ledger=ledger,
            feedback=feedback,
            dead=dead,
            revisions=revisions,
            lock=lock,
            settings=settings,
            in_flight=self.in_flight,
            stats=self.stats,
            rng=self._rng,
        )

    # -- the pass -----------------------------------------------------------------------

    async def run_pass(self) -> int:
        """One timer pass; returns how many steps it decided (not those left for later)."""
        owned = self._assignment()
        if not owned:
            return 0
        await self._book.refresh()
        async with self._lock:
            p = _Pass(self._rev.now_ms())
            # Steps handed to a queue are marked `sending`, so a page of due steps never fills
            # with steps already in flight; those a dead process left are due again.
            for partition in owned - self._assigned_at.keys():
                self._assigned_at[partition] = p.now
            for partition in self._assigned_at.keys() - owned:
                del self._assigned_at[partition]
            due = await self._steps.due(self._assigned_at, p.now, PASS_LIMIT)
            if p.now >= self._stale_check_at:
                self._stale_check_at = p.now + STALE_CHECK_MS
                due += await self._steps.stale_sending(owned, p.now - ORPHAN_AFTER_MS, PASS_LIMIT)
            unique = {_did(r): r for r in due}
            due = [r for did, r in unique.items() if did not in self.in_flight]
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
        return len(due) - p.skipped

    async def _decide_site(self, site: str, rows: list[StepRow], p: _Pass) -> None:
        persons = {r.person_id for r in rows}
        kinds = {self._book.step_kind(site, r.campaign_id, r.step) for r in rows}
        people = await self._recipients.load(
            site, persons, {r.audience_id for r in rows}, {k for k in kinds if k}
        )
        policy = self._book.policies.get(site)
        windows = [c.per for c in (policy.channel_caps.values() if policy else ())]
        for r in rows:
            live = self._book.campaign(site, r.campaign_id)
            if live is not None and live.spec.frequency is not None:
                windows.append(live.spec.frequency.per)
        sent_by_channel: dict[tuple[str, str], list[tuple[str, int]]] = {}
        sent_by_campaign: dict[tuple[str, str], list[tuple[str, int]]] = {}
        if windows:
            for s in await self._ledger.recent_sends(site, persons, p.now - max(windows)):
                sent = (s.delivery_id, s.at_ms)
                sent_by_channel.setdefault((s.person_id, s.channel), []).append(sent)
                sent_by_campaign.setdefault((s.person_id, s.campaign_id), []).append(sent)
        for r in sorted(rows, key=lambda r: (r.due_at, r.step)):
            self._decide(r, people[r.person_id], p, sent_by_channel, sent_by_campaign)

    def _decide(
        self,
        r: StepRow,
        person: Person,
        p: _Pass,
        sent_by_channel: dict[tuple[str, str], list[tuple[str, int]]],
        sent_by_campaign: dict[tuple[str, str], list[tuple[str, int]]],
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
            p.skipped += 1
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
                p.steps.append(
                    r.moved(self._rev.next(), state=PENDING, due_at=until, reason="quiet_hours")
                )
                self.stats.count(self.stats.decided, "deferred")
                return
        did = _did(r)

        def others(sent: list[tuple[str, int]]) -> list[int]:
            return [at for d, at in sent if d != did]  # an earlier try of this one is not another

        wait = 0
        if spec.frequency is not None:
            wait = cap_wait_ms(
                others(sent_by_campaign.get((r.person_id, spec.id), [])), spec.frequency, p.now
            )
        policy = self._book.policies.get(r.site_id)
        channel_cap = policy.channel_caps.get(kind) if policy else None  # type: ignore[call-overload]
        if channel_cap is not None:
            wait = max(
                wait,
                cap_wait_ms(
                    others(sent_by_channel.get((r.person_id, kind), [])), channel_cap, p.now
                ),
            )
        if wait:
            if spec.on_cap == "delay":
                p.steps.append(
                    r.moved(self._rev.next(), state=PENDING, due_at=p.now + wait, reason="capped")
                )
                self.stats.count(self.stats.decided, "deferred")
            else:
                self._finish(r, p, live, kind, destination, "capped", "frequency")
            return
        try:
            content = self._composer.content(spec, r.step, step, kind, person, products)
        except TemplateRenderError as exc:
            self._finish(r, p, live, kind, destination, "failed", exc.detail, dead=True)
            return
        attempt = r.attempt + 1
        p.ledger.append(
            self._rows.delivery(r, live, kind, destination, "sending", p.now, attempt=attempt)
        )
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
        p.steps.append(r.moved(self._rev.next(), state=SENDING, reason=""))
        p.flights[did] = InFlight(r, live.version, kind, destination, forget, person.traits)
        sent_by_campaign.setdefault((r.person_id, spec.id), []).append((did, p.now))
        sent_by_channel.setdefault((r.person_id, kind), []).append((did, p.now))
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
        p.ledger.append(
            self._rows.delivery(r, live, kind, destination, status, p.now, reason=reason)
        )
        if dead:
            p.dead.append(dead_from(r, kind, destination, reason, p.now))
        self.stats.count(self.stats.decided, status)

    # -- queues -------------------------------------------------------------------------

    def _queue(self, destination: str) -> DestinationQueue:
        config = self._book.destinations[destination]
        queue = self.queues.get(destination)
        if queue is not None and self._queue_configs.get(destination) == config:
            return queue
        try:
            channel = self._book.channel(destination)
        except ConfigError:
            channel = BrokenChannel(destination)  # every send comes back unavailable
        if queue is not None:
            asyncio.get_running_loop().create_task(queue.close())
        queue = DestinationQueue(
            destination,
            channel,
            concurrency=config.concurrency,
            rate_per_s=config.rate_per_s,
            timeout_s=config.timeout_s,
            clock=self._clock,
            on_result=self.outcomes.on_results,
        )
        self.queues[destination] = queue
        self._queue_configs[destination] = config
        return queue

    def backlog(self, destination: str) -> int:
        queue = self.queues.get(destination)
        return queue.backlog if queue else 0

    async def close(self) -> None:
        for queue in self.queues.values():
            await queue.close()
        self.queues.clear()


def _did(r: StepRow) -> str:
    return row_delivery_id(r)
