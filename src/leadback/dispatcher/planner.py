"""The dispatcher's round handler: audience changes -> scheduled steps, cancellations.

* ``enter``: each enabled campaign on the audience enrolls the person: the holdout share is
  recorded as ``held_out`` and gets nothing; everyone else gets every step scheduled at the
  entry time plus the waits before it (``rev`` 0, so replaying the change is harmless).
* ``exit``: pending steps of the person in campaigns on that audience are cancelled (reason:
  the exit's, e.g. ``rule_changed``, ``erased``); an erasure also suppresses the person.
* ``update`` (products changed): nothing to do: a step reads the current products when sent.

Campaigns created after a person entered do not enroll them retroactively.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from datetime import datetime
from functools import partial

import orjson

from leadback.clock import Clock
from leadback.dispatcher.book import Book
from leadback.dispatcher.feedback import FeedbackWriter, Suppression
from leadback.dispatcher.ledger import DeliveryRow, Ledger
from leadback.dispatcher.policy import delivery_id, held_out
from leadback.dispatcher.steps import CANCELLED, StepRow, StepStore, row_delivery_id
from leadback.logs import get_logger
from leadback.stream.batches import Intent, PartitionBatch
from leadback.stream.handler import Retrying

log = get_logger(__name__)


@functools.lru_cache(maxsize=65_536)
def parse_ms(text: str) -> int:
    """``2026-11-23T07:00:00.123Z`` -> Unix ms (remembered: a round's changes share a time)."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class Revisions:
    """Strictly increasing revisions from a clock (ms), for rows that replace earlier ones."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(int(self._clock.now() * 1000), self._last + 1)
        return self._last

    def now_ms(self) -> int:
        return int(self._clock.now() * 1000)


class ChangePlanner:
    """Turns batches of change records into step rows (the stream loop's handler)."""

    def __init__(
        self,
        book: Book,
        steps: StepStore,
        ledger: Ledger,
        feedback: FeedbackWriter,
        revisions: Revisions,
        lock: asyncio.Lock,
    ) -> None:
        self._book = book
        self._steps = steps
        self._ledger = ledger
        self._feedback = feedback
        self._rev = revisions
        self._lock = lock
        self.changes_seen = 0
        self.enrolled = 0
        self.cancelled = 0
        self.bad_records = 0

    async def recall(self, partition: int, offset: int, retrying: Retrying) -> Intent | None:
        return None  # every write here is idempotent: a batch may be re-formed differently

    async def write(
        self, batches: Sequence[PartitionBatch], retrying: Retrying
    ) -> list[PartitionBatch]:
        await retrying("load campaigns", self._book.refresh)
        async with self._lock:
            for batch in batches:
                await self._plan(batch, retrying)
                batch.release()
        return list(batches)

    async def settle(self, batches: Sequence[PartitionBatch], retrying: Retrying) -> None:
        return None

    async def _plan(self, batch: PartitionBatch, retrying: Retrying) -> None:
        enroll: list[StepRow] = []
        held: list[DeliveryRow] = []
        exits: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}  # (site, person) -> ...
        erased: list[Suppression] = []
        seen = 0
        for value in batch.values:
            try:
                change = orjson.loads(value)
                site, person = change["site_id"], change["visitor_id"]
                audience, kind = change["audience_id"], change["change"]
                version, at = int(change["version"]), parse_ms(change["at"])
            except (ValueError, KeyError, TypeError):
                self.bad_records += 1
                log.error("an audience change record is malformed", partition=batch.partition)
                continue
            seen += 1
            if kind == "enter":
                entered = parse_ms(change["entered_at"]) if change.get("entered_at") else at
                for live in self._book.on_audience(site, audience):
                    spec = live.spec
                    if held_out(person, spec.id, spec.holdout):
                        held.append(
                            DeliveryRow(
                                delivery_id=delivery_id(site, spec.id, person, version, entered, 0),
                                site_id=site,
                                campaign_id=spec.id,
                                campaign_version=live.version,
                                person_id=person,
                                audience_id=audience,
                                membership_version=version,
                                step=0,
                                channel="",
                                destination_id="",
                                status="held_out",
                                at_ms=self._rev.now_ms(),
                                change_at=at,
                                seq=self._rev.next(),
                            )
                        )
                        continue
                    due = entered
                    for i, step in enumerate(spec.steps):
                        due += step.wait
                        enroll.append(
                            StepRow(
                                site_id=site,
                                campaign_id=spec.id,
                                person_id=person,
                                membership_version=version,
                                step=i,
                                audience_id=audience,
                                partition=batch.partition,
                                due_at=due,
                                products=tuple(change.get("products") or ()),
                                change_at=entered,
                            )
                        )
            elif kind == "exit":
                if change["reason"] == "erased":
                    # The erasure deleted the person's steps and deliveries itself: cancelling
                    # them here wrote rows of an erased person back whenever this read came
                    # before its delete.
                    erased.append(Suppression(site, f"person:{person}", "all", "erased"))
                elif self._book.has_campaigns(site, audience):
                    # Steps to cancel exist only on audiences with campaigns; the timer pass
                    # cancels any left by a campaign deleted since (`campaign_gone`). No read
                    # otherwise: exits come by the thousand per second when audiences are busy.
                    exits.setdefault((site, person), {})[audience] = (version, change["reason"])
        if enroll:
            await retrying("schedule steps", lambda: self._steps.write(enroll))
            self.enrolled += len({r.key[:4] for r in enroll})
        if held:
            await retrying("record holdouts", lambda: self._ledger.record(held))
        if erased:
            now = self._rev.now_ms()
            await retrying("suppress erased", lambda: self._feedback.suppress(erased, at_ms=now))
        if exits:
            await self._cancel(exits, retrying)
        self.changes_seen += seen  # counted once planned (tests wait on it)

    async def _cancel(
        self, exits: dict[tuple[str, str], dict[str, tuple[int, str]]], retrying: Retrying
    ) -> None:
        by_site: dict[str, set[str]] = {}
        audiences: set[str] = set()
        for (site, person), per_audience in exits.items():
            by_site.setdefault(site, set()).add(person)
            audiences.update(per_audience)
        cancelled: list[StepRow] = []
        rows: list[DeliveryRow] = []
        for site, persons in by_site.items():
            pending = await retrying(
                "read pending steps", partial(self._steps.pending_for, site, persons, audiences)
            )
            for row in pending:
                exit_ = exits[(site, row.person_id)].get(row.audience_id)
                if exit_ is None or exit_[0] <= row.membership_version:
                    continue
                reason = f"exit:{exit_[1]}"
                cancelled.append(row.moved(self._rev.next(), state=CANCELLED, reason=reason))
                live = self._book.campaign(site, row.campaign_id)
                rows.append(
                    DeliveryRow(
                        delivery_id=row_delivery_id(row),
                        site_id=site,
                        campaign_id=row.campaign_id,
                        campaign_version=live.version if live else 0,
                        person_id=row.person_id,
                        audience_id=row.audience_id,
                        membership_version=row.membership_version,
                        step=row.step,
                        channel="",
                        destination_id="",
                        status="cancelled",
                        reason=reason,
                        at_ms=self._rev.now_ms(),
                        change_at=row.change_at,
                        seq=self._rev.next(),
                    )
                )
        if cancelled:
            await retrying("cancel steps", lambda: self._steps.write(cancelled))
            await retrying("record cancellations", lambda: self._ledger.record(rows))
            self.cancelled += len(cancelled)
