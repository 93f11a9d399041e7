"""The audience definitions an engine evaluates, as last loaded, with what is compiled from them
(evaluation statements, the event types and signals each audience reads), cached until they
change. An audience is *live* (evaluated as events arrive) once every signal it reads holds the
stored history (:mod:`leadback.audiences.backfill`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leadback.audiences.compiler import compile_rule, trigger_types
from leadback.audiences.digest import BatchDigest
from leadback.audiences.program import EvaluationProgram, build_program
from leadback.audiences.repository import StoredAudience
from leadback.audiences.rules import AudienceSpec, references
from leadback.audiences.signals import Signal, by_id


class LoadedAudiences:
    """Active audiences per site, and their compiled forms."""

    def __init__(self, database: str) -> None:
        self._db = database
        self._by_site: dict[str, list[StoredAudience]] = {}
        self._programs: dict[tuple[Any, ...], EvaluationProgram] = {}
        self._triggers: dict[tuple[str, str, int], frozenset[str] | None] = {}
        self._wanted: frozenset[str] | None = None
        self._signals: dict[tuple[str, str, int], frozenset[Signal]] = {}
        self._complete: frozenset[int] = frozenset()
        # Per site, its live audiences: asked for on every round and every /metrics scrape.
        self._live: dict[str, list[StoredAudience]] = {}

    def load(self, stored: Sequence[StoredAudience]) -> None:
        """Take the stored definitions (deleted ones are left out); drop the caches if any
        definition changed."""
        active: dict[str, list[StoredAudience]] = {}
        for a in stored:
            if not a.deleted:
                active.setdefault(a.spec.site, []).append(a)
        if active != self._by_site:
            self._by_site = active
            self._programs.clear()
            self._triggers.clear()
            self._signals.clear()
            self._wanted = None
            self._live.clear()

    def set_complete(self, signal_ids: set[int] | frozenset[int]) -> None:
        """The signals whose state holds all stored history (the rest are being filled)."""
        complete = frozenset(signal_ids)
        if complete != self._complete:
            self._complete = complete
            self._live.clear()

    def signals_of(self, audience: StoredAudience) -> frozenset[Signal]:
        """The signals ``audience``'s rule reads (with those of audiences it refers to)."""
        key = (audience.spec.site, audience.spec.id, audience.version)
        found = self._signals.get(key)
        if found is None:
            found = compile_rule(audience.spec, self.specs(audience.spec.site)).signals
            self._signals[key] = found
        return found

    def all_signals(self) -> list[Signal]:
        """Every signal some active audience reads: what the feed must match."""
        found: set[Signal] = set()
        for site_audiences in self._by_site.values():
            for a in site_audiences:
                found |= self.signals_of(a)
        return by_id(found)

    def is_live(self, audience: StoredAudience) -> bool:
        """Whether every signal ``audience`` reads is complete."""
        return all(s.id in self._complete for s in self.signals_of(audience))

    def live(self, site: str) -> list[StoredAudience]:
        """Active audiences of ``site`` that are live."""
        found = self._live.get(site)
        if found is None:
            found = self._live[site] = [a for a in self._by_site.get(site, []) if self.is_live(a)]
        return list(found)

    def not_live(self) -> int:
        """Active audiences not live yet (signals being backfilled)."""
        return sum(len(active) - len(self.live(site)) for site, active in self._by_site.items())

    def sites(self) -> list[str]:
        """Sites with at least one active audience, sorted."""
        return sorted(self._by_site)

    def of_site(self, site: str) -> list[StoredAudience]:
        """Active audiences of ``site``."""
        return list(self._by_site.get(site, []))

    def specs(self, site: str) -> dict[str, AudienceSpec]:
        """``site``'s active specs by id (what ``in_audience`` resolves against)."""
        return {a.spec.id: a.spec for a in self._by_site.get(site, [])}

    def with_dependents(self, site: str, changed: set[str]) -> list[StoredAudience]:
        """The active audiences of ``changed`` and those that refer to them through
        ``in_audience``, directly or not (they change with them)."""
        changed = set(changed)
        live = self._by_site.get(site, [])
        grew = True
        while grew:
            grew = False
            for a in live:
                if a.spec.id not in changed and references(a.spec.rule) & changed:
                    changed.add(a.spec.id)
                    grew = True
        return [a for a in live if a.spec.id in changed]

    def program(self, site: str, evaluate: Sequence[StoredAudience]) -> EvaluationProgram:
        """What evaluating ``evaluate`` for a set of persons runs (compiled once per
        definition set)."""
        key = (site, tuple((a.spec.id, a.version) for a in evaluate))
        program = self._programs.get(key)
        if program is None:
            program = build_program(self._db, [a.versioned for a in evaluate], self.specs(site))
            self._programs[key] = program
        return program

    def triggered(self, audience: StoredAudience, digest: BatchDigest) -> bool:
        """Whether a round with this digest can change ``audience`` (else only time can)."""
        triggers = self._trigger_types(audience)
        return triggers is None or digest.may_hold(triggers)

    def wanted_types(self) -> frozenset[str]:
        """The event types some loaded audience reacts to (audiences that react to any event
        need no type)."""
        if self._wanted is None:
            found: set[str] = set()
            for site_audiences in self._by_site.values():
                for a in site_audiences:
                    found |= self._trigger_types(a) or frozenset()
            self._wanted = frozenset(found)
        return self._wanted

    def _trigger_types(self, audience: StoredAudience) -> frozenset[str] | None:
        key = (audience.spec.site, audience.spec.id, audience.version)
        if key not in self._triggers:
            self._triggers[key] = trigger_types(audience.spec, self.specs(audience.spec.site))
        return self._triggers[key]
