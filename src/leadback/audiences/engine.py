"""The audience engine: keeps memberships right as events arrive and as time passes.

It coordinates the parts; whatever writes memberships holds one lock (versions are computed from
the stored memberships):

* :meth:`AudienceEngine.on_round` runs after the segmenter inserted a round of batches, before
  it commits: the round's identity events are applied (:mod:`leadback.identity.updates`), then
  the audiences those event types can change are evaluated for the persons the round touched
  (:mod:`~leadback.audiences.evaluation`).
* :meth:`AudienceEngine.tick` runs on a timer: it picks up changed definitions (exiting
  everyone from deleted ones at once; new and changed ones are brought live by a background
  :class:`~leadback.audiences.refresh.Refresher`: backfill of their signals, then everyone of the
  site evaluated, range by range), evaluates the persons whose ``due`` moment has passed (a cart
  becomes abandoned an hour later with no new event), and sweeps the outbox now and then
  (:mod:`~leadback.audiences.outbox`). Timer work takes the lock a chunk at a time, so a round
  never waits for a whole pass; while rounds run, the due persons are handed to the next round
  instead, which evaluates them with its own (one evaluation instead of two).
* Erasure (:mod:`~leadback.audiences.erasure`) and explain serve the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from leadback.audiences import person_state
from leadback.audiences.backfill import SignalBackfill
from leadback.audiences.changes import ChangePublisher
from leadback.audiences.definitions import LoadedAudiences
from leadback.audiences.digest import BatchDigest, digest, merge
from leadback.audiences.due_waiting import DueWaiting
from leadback.audiences.erasure import Eraser, Erasure
from leadback.audiences.evaluation import Evaluator
from leadback.audiences.explain import explain_audience
from leadback.audiences.outbox import AudienceStats, ChangeOutbox
from leadback.audiences.refresh import Refresher
from leadback.audiences.repository import AudienceRepository, StoredAudience
from leadback.audiences.rules import AudienceSpec
from leadback.clock import Clock, SystemClock
from leadback.errors import LeadbackError
from leadback.identity.contact_book import ContactBook
from leadback.identity.graph import IdentityGraph
from leadback.identity.updates import IdentityUpdater
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

__all__ = ["AudienceEngine", "AudienceStats", "Erasure"]

log = get_logger(__name__)

_CHUNK = 2_000  # persons per statement (and per hold of the lock) in timer passes
_SWEEP_EVERY_S = 30.0
_RELOAD_EVERY_S = 5.0  # definitions written by another process; in-process writes set `changed`
_DUE_LOOKBACK_MS = 2 * 86_400_000


class AudienceEngine:
    """Evaluates audiences in ClickHouse and publishes the resulting changes."""

    def __init__(
        self,
        store: ClickHouseStore,
        publisher: ChangePublisher,
        *,
        clock: Clock | None = None,
        repository: AudienceRepository | None = None,
        backfill_store: ClickHouseStore | None = None,
    ) -> None:
        self._store = store
        # Backfills and their reads run on a client of their own: rounds do not queue behind.
        self._backfill_store = backfill_store or ClickHouseStore(store.settings)
        # A round's second client: its memberships read runs beside the state read.
        self._reader_store = ClickHouseStore(store.settings)
        self._clock = clock or SystemClock()
        self.repository = repository or AudienceRepository(store, clock=self._clock)
        self.identity = IdentityGraph(store, clock=self._clock)
        self.stats = AudienceStats()
        self._definitions = LoadedAudiences(store.database)
        self._outbox = ChangeOutbox(store, publisher, self.stats)
        self._identity_updates = IdentityUpdater(self.identity, ContactBook(store))
        self._evaluator = Evaluator(
            store,
            self._definitions,
            self._outbox,
            clock=self._clock,
            stats=self.stats,
            reader=self._reader_store,
        )
        self._eraser = Eraser(store, self.identity, self._evaluator)
        self._lock = asyncio.Lock()
        self.backfill = SignalBackfill(self._backfill_store, state_store=store)
        self.refresher = Refresher(
            self._backfill_store,
            self.backfill,
            self._definitions,
            self.repository,
            self._evaluator,
            self.identity,
            lock=self._lock,
            settle=self._settle_doubt,
            clock=self._clock,
        )
        self._refreshing: asyncio.Task[None] | None = None
        self._last_due: dict[str, int] = {}
        self._due_waiting = DueWaiting()  # the timer's hand-over to rounds
        self._last_sweep = -_SWEEP_EVERY_S
        self._last_reload = -_RELOAD_EVERY_S
        self.changed = asyncio.Event()  # set by the admin API after a definition write

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what a crash left in the outbox, load definitions, start bringing new and
        changed ones live (in the background: :meth:`refreshed` waits for it)."""
        await self._backfill_store.connect()
        async with self._lock:
            await self._sweep(whole=True)
            await self._reconcile()
            # Before any round inserts: the feed exists even when no definition changed.
            await person_state.ensure_ttl(self._store)
            await self.backfill.ensure_feed(self._definitions.all_signals())

    async def close(self) -> None:
        """Stop a refresh in progress (it resumes at the next start) and close the backfill's
        client."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
        await self._backfill_store.close()
        await self._reader_store.close()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        interval_s: float,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        """Call :meth:`tick` every ``interval_s`` (sooner after a definition changed) while
        ``leader()`` says this process is the one to run timer passes, until ``stop``. The
        caller closes the engine (:meth:`close`) once its rounds are over too: a round the
        stream loop finishes after the stop still reads on the engine's clients."""
        while not stop.is_set():
            waiter = asyncio.create_task(self.changed.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                break
            reload = self.changed.is_set() or (
                self._clock.monotonic() - self._last_reload >= _RELOAD_EVERY_S
            )
            self.changed.clear()
            try:
                await self.tick(leader=leader(), reload=reload, wait=False, hand_over=True)
            except LeadbackError as exc:
                # Store or broker trouble: the same pass runs again next tick.
                log.error("audience tick failed", error=str(exc))

    async def tick(
        self,
        *,
        leader: bool = True,
        reload: bool = True,
        wait: bool = True,
        hand_over: bool = False,
    ) -> None:
        """Reload definitions (if ``reload``); as the leader also bring changed ones live, run
        the due pass and sweep the outbox now and then. ``wait``: until the definitions loaded
        are live (else the refresh goes on in the background). ``hand_over``: while rounds
        run, the due persons are evaluated by the next round (see :meth:`on_round`)."""
        async with self._lock:
            await self._settle_doubt()
            if reload:
                await self._reconcile(refresh=leader)
        if not leader:
            return
        if wait:
            await self.refreshed()
        await self._due_pass(hand_over=hand_over)
        if self._clock.monotonic() - self._last_sweep >= _SWEEP_EVERY_S:
            async with self._lock:
                await self._sweep()

    @property
    def refreshing(self) -> bool:
        """Whether new or changed definitions are being brought live now."""
        return self._refreshing is not None and not self._refreshing.done()

    def not_live(self) -> int:
        """Active audiences not evaluated as events arrive yet (signals being backfilled)."""
        return self._definitions.not_live()

    async def refreshed(self) -> None:
        """Wait until the refresh in progress (if any) is over; raise what stopped it."""
        task = self._refreshing
        if task is not None:
            await asyncio.shield(task)

    def audiences(self, site: str) -> list[StoredAudience]:
        """Active audiences of a site, as last loaded."""
        return self._definitions.of_site(site)

    def now_ms(self) -> int:
        return self._evaluator.now_ms()

    async def _sweep(self, *, whole: bool = False) -> None:
        # The whole change log at start (a crash of this or another process may have left
        # changes unpublished at any time before); then the recent ones and the failed ones.
        self._last_sweep = self._clock.monotonic()
        await self._outbox.sweep(now_ms=None if whole else self.now_ms())

    async def _settle_doubt(self) -> None:
        # A write stopped between the change log and the memberships: bring the memberships
        # up to the log before anything evaluates again (one version, one content).
        if self._outbox.in_doubt:
            await self._sweep()

    # -- after each round -----------------------------------------------------------------

    def digest(self, body: bytes) -> BatchDigest:
        """What :meth:`on_round` needs from an inserted ``JSONEachRow`` body (bulk scans: the
        event types the loaded audiences react to, and the identity lines)."""
        return digest(body, self._definitions.wanted_types())

    async def on_batch(self, keys: Iterable[bytes], values: Sequence[bytes], token: str) -> None:
        """:meth:`on_round` for one batch of event values."""
        await self.on_round(keys, [self.digest(b"\n".join(values))], token)

    async def on_round(
        self, keys: Iterable[bytes], digests: Sequence[BatchDigest], token: str
    ) -> None:
        """Identity events, then incremental evaluation for the persons of the round's records
        (``keys``: ``site_id:visitor_id``; ``digests``: of the bodies inserted)."""
        by_site: dict[str, set[str]] = {}
        for key in keys:
            site, _, visitor = key.decode().partition(":")
            if visitor and not visitor.startswith("e:"):
                by_site.setdefault(site, set()).add(visitor)
        round_digest = merge(digests)
        events = [orjson.loads(line) for line in round_digest.identity]
        self._due_waiting.round_started(self._clock.monotonic())
        try:
            await self._round(by_site, round_digest, events, token)
        finally:
            self._due_waiting.round_ended(self._clock.monotonic())

    async def _round(
        self,
        by_site: dict[str, set[str]],
        round_digest: BatchDigest,
        events: list[dict[str, Any]],
        token: str,
    ) -> None:
        async with self._lock:
            await self._settle_doubt()
            due = self._due_waiting.take(_CHUNK)
            requests: dict[str, tuple[set[str], Sequence[StoredAudience]]] = {}
            # Persons evaluated besides the round's visitors: those an identity change left,
            # and the due persons the timer handed over.
            also: dict[str, set[str]] = {}
            site_events: dict[str, list[dict[str, Any]]] = {site: [] for site in by_site}
            for e in events:
                site_events.setdefault(str(e.get("site_id")), []).append(e)
            # Every site's identity events at once (a lookup or two and an insert per round).
            identity = await self._identity_updates.apply_sites(site_events, token=token)
            for site in sorted(site_events):
                changes = identity[site]
                self.stats.identity_links += changes.links
                # Only the audiences these event types can change (all of them when persons
                # merged); the rest can only change with time, which the timer pass covers.
                audiences = self._definitions.live(site)
                if not (changes.lost or changes.moved):
                    audiences = [
                        a for a in audiences if self._definitions.triggered(a, round_digest)
                    ]
                if audiences:
                    requests[site] = (by_site.get(site, set()) | changes.moved, audiences)
                    also[site] = changes.lost
            for site, due_persons in due.items():
                # Due persons: every live audience of theirs can change with time alone.
                visitors = requests[site][0] if site in requests else set()
                requests[site] = (visitors, self._definitions.live(site))
                also[site] = also.get(site, set()) | due_persons
            # Every site's visitors resolved to persons, and the persons' visitors found, in
            # one statement; their evaluation in two more.
            outcome = await self._evaluator.assess_sites(
                {
                    site: (also.get(site, set()), audiences)
                    for site, (_, audiences) in requests.items()
                },
                token=token,
                visitors={site: visitors for site, (visitors, _) in requests.items()},
            )
            await self._evaluator.commit(outcome, token=token)
            self._due_waiting.done(due)
            self.stats.due_in_rounds += sum(len(persons) for persons in due.values())

    # -- definitions ----------------------------------------------------------------------

    async def _reconcile(self, *, refresh: bool = True) -> None:
        self._last_reload = self._clock.monotonic()
        stored = await self.repository.all(include_deleted=True)
        self._definitions.load(stored)
        self._definitions.set_complete(await self.backfill.complete())
        if not refresh:
            return
        evaluated = await self.repository.evaluated_versions()
        stale = [a for a in stored if evaluated.get((a.spec.site, a.spec.id)) != a.version]
        for a in stale:
            if a.deleted:
                token = f"rules:{a.spec.site}:{self.now_ms()}:{a.spec.id}"
                await self._evaluator.exit_all(a.spec.site, a, token=token)
                await self.repository.mark_evaluated(a.spec.site, a.spec.id, a.version)
        live = [a for a in stale if not a.deleted]
        incomplete = any(not self._definitions.is_live(a) for a in self._all_active())
        # A deletion alone also refreshes: the feed stops matching the signals nobody reads.
        shrunk = len(live) < len(stale)
        if (live or incomplete or shrunk) and (self._refreshing is None or self._refreshing.done()):
            if self._refreshing is not None and not self._refreshing.cancelled():
                failed = self._refreshing.exception()
                if failed is not None:
                    log.error("audience refresh failed; trying again", error=str(failed))
            self._refreshing = asyncio.create_task(self.refresher.run(live))

    def _all_active(self) -> list[StoredAudience]:
        return [a for site in self._definitions.sites() for a in self._definitions.of_site(site)]

    # -- timer ----------------------------------------------------------------------------

    async def _due_pass(self, *, hand_over: bool = False) -> None:
        # One statement finds every site's due persons (a pass used to run one per site);
        # while rounds run they go to the next round (up to a chunk waiting), else they are
        # evaluated here a chunk at a time, several sites per chunk.
        now = self.now_ms()
        sites = self._definitions.sites()
        if not sites:
            return
        since = [self._last_due.get(site, now - _DUE_LOOKBACK_MS) for site in sites]
        # On the backfill's client: the rounds' one runs one statement at a time, and a round
        # queued behind this read (~40 ms at 50M stored, every second) for nothing.
        rows = await self._backfill_store.query(
            f"SELECT DISTINCT site_id, person_id FROM {self._store.database}.audience_due "
            "WHERE site_id IN {s:Array(String)} AND due_at > {lo:Int64} AND due_at <= {b:Int64} "
            "AND due_at > {a:Array(Int64)}[indexOf({s:Array(String)}, site_id)]",
            {"s": sites, "a": since, "lo": min(since), "b": now},
        )
        for site in sites:
            self._last_due[site] = now
        waiting = self._due_waiting.add((str(site), str(person)) for site, person in rows)
        running = self._due_waiting.rounds_running(self._clock.monotonic())
        if hand_over and running and waiting <= _CHUNK:
            return
        # No rounds, or a backlog (a start after downtime) more than a round takes: evaluated
        # here, a chunk at a time, as rounds go on between the chunks.
        due = self._due_waiting.drain()
        self.stats.due_in_timer += len(due)
        for i in range(0, len(due), _CHUNK):
            chunk: dict[str, tuple[set[str], None]] = {}
            for site, person in due[i : i + _CHUNK]:
                chunk.setdefault(site, (set(), None))[0].add(person)
            # The lock a chunk at a time: a round waits for one chunk, not the pass.
            async with self._lock:
                await self._settle_doubt()
                token = f"due:{now}:{i}"
                outcome = await self._evaluator.assess_sites(chunk, token=token)
                await self._evaluator.commit(outcome, token=token)

    # -- admin operations -----------------------------------------------------------------

    def explain(
        self,
        spec: AudienceSpec,
        version: int = 0,
        site_audiences: dict[str, AudienceSpec] | None = None,
    ) -> dict[str, str]:
        """:func:`~.explain.explain_audience`; ``site_audiences`` default to the definitions
        last loaded."""
        site_specs = site_audiences
        if site_specs is None:
            site_specs = self._definitions.specs(spec.site)
        return explain_audience(self._store.database, spec, version, site_specs)

    async def erase(self, site: str, *, visitor_id: str | None, user_id: str | None) -> Erasure:
        """Remove a visitor's or user's events, identity, contacts and memberships; exits first."""
        async with self._lock:
            await self._settle_doubt()
            return await self._eraser.erase(site, visitor_id=visitor_id, user_id=user_id)
