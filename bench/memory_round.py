"""Experiment, not the product: what a round would cost with the audience state in memory.

Issue 12's goal (freshness p99 under 1 s at 5,000 pixels/s with 500 audiences) needs a round of
a few thousand events to cost far less than it does. Today a round reads its persons' signal
state and memberships back from ClickHouse (two statements), and every insert into ``events``
runs the signal feed. This measures the alternative on one core: the round's events parsed in
Python, each event tested against its site's signal predicates in Python, the persons' signal
state and memberships kept in dicts, the compiled rules (``EvaluationProgram.members``) and
the product's own transition code (``Evaluator._outcome``) run on them; then the writes such a
round would still make, with no feed view: ``events``, the new ``person_signals`` rows,
``audience_changes`` and ``memberships``.

The events are tested with ``leadback.audiences.event_tests.SignalTests``, the Python twin of
the feed's SQL, and the times trimmed and the due times computed with ``state_read.trim_times``
and ``due_time``, the twins of the state read's (property tests hold both to the same answers).
Identities, the Kafka publish and the dispatcher are left out (measured elsewhere:
docs/performance.md). It answers one question: how much cheaper per event.

    python -m bench.memory_round [--rounds 8] [--events 8000] [--audiences 500]

Run it pinned to one idle core (``taskset -c 0``) to compare with the segmenter's own figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import random
import statistics
import tempfile
import time
from typing import Any

import orjson
import yaml
from tests.integration.audience_kit import RecordingPublisher, encoded, event

from bench.audience_sets import audience_sites, many_audiences_yaml
from bench.common import cpu_model
from bench.history import CATEGORIES, MIX, PRODUCTS
from leadback.audiences.compiler import NEVER, compile_rule
from leadback.audiences.diff import Stored
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.evaluation import Outcome
from leadback.audiences.event_tests import SignalTests
from leadback.audiences.rule_functions import SignalState
from leadback.audiences.rules import parse_audiences
from leadback.audiences.state_read import PersonStates, due_time, trim_times
from leadback.clock import ManualClock
from leadback.logs import configure_logging
from leadback.settings import ClickHouseSettings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

NOW = 1_800_000_000.0
TTL_MS = 395 * 86_400_000


class MemoryRound:
    """The in-memory round: state and memberships in dicts, the product's rules and diff."""

    def __init__(self, engine: AudienceEngine, sites: list[str]) -> None:
        self._engine = engine
        defs = engine._definitions
        self._live = {s: defs.live(s) for s in sites}
        self._programs = {s: defs.program(s, self._live[s]) for s in sites}
        signals = set()
        for site in sites:
            specs = {a.spec.id: a.spec for a in self._live[site]}
            for a in self._live[site]:
                signals |= compile_rule(a.spec, specs).signals
        self.tests = SignalTests(signals)
        self.persons: dict[tuple[str, str], SignalState] = {}
        self.products: dict[tuple[str, str, str], SignalState] = {}
        self.members: dict[str, dict[tuple[str, str], Stored]] = collections.defaultdict(dict)

    def _note(self, state: SignalState, signal: int, keep: bool, t: int) -> None:
        if keep:
            kept = state.times.get(signal)
            if kept is None:
                state.times[signal] = [t]
            else:
                kept.append(t)  # type: ignore[attr-defined]
        state.last[signal] = t

    def run(self, values: list[bytes], now: int) -> tuple[Outcome, list[bytes]]:
        """One round: (outcome, the ``person_signals`` rows it adds)."""
        touched: dict[str, set[str]] = collections.defaultdict(set)
        rows: list[bytes] = []
        for raw in values:
            e = orjson.loads(raw)
            site, visitor = e["site_id"], e["visitor_id"]
            touched[site].add(visitor)
            for signal, product, keep in self.tests.entries(e):
                if product:
                    state = self.products.setdefault((site, visitor, product), SignalState())
                else:
                    state = self.persons.setdefault((site, visitor), SignalState())
                self._note(state, signal, keep, now)
                rows.append(
                    orjson.dumps(
                        {
                            "site_id": site,
                            "visitor_id": visitor,
                            "signal": signal,
                            "product": product,
                            "times": [[now, 0]],
                            "last_t": now,
                        }
                    )
                )
        outcome = Outcome()
        since = now - TTL_MS
        for site, visitors in touched.items():
            program = self._programs[site]
            params = program.params
            needs = dict(
                zip(
                    params["need_ids"],
                    zip(params["need_window"], params["need_latest"], strict=True),
                    strict=True,
                )
            )
            states = PersonStates()
            for v in visitors:
                found = self.persons.get((site, v))
                if found is None:
                    continue
                # Trimmed like the state read (kept whole here: the due times read them too).
                trimmed = {
                    s: trim_times(ts, needs.get(s), now=now, since=since)
                    for s, ts in found.times.items()
                }
                states.persons[v] = SignalState(trimmed, found.last)
                states.due[v] = min(
                    (
                        due_time(found.times.get(s, ()), last, params["thresholds"], now=now)
                        for s, last in found.last.items()
                    ),
                    default=NEVER,
                )
            qualifying = program.members(states, now)
            stored = {k: m for k, m in self.members[site].items() if k[1] in visitors}
            self._engine._evaluator._outcome(
                site,
                self._live[site],
                qualifying,
                stored,
                program.dues(states),
                now=now,
                token="memory",
                exit_reason="no_longer_qualifies",
                into=outcome,
            )
        return outcome, rows

    def applied(self, outcome: Outcome) -> None:
        """What a commit would leave in memory."""
        for line in outcome.memberships:
            m = orjson.loads(line)
            self.members[m["site_id"]][(m["audience_id"], m["person_id"])] = Stored(
                m["state"], m["version"], m["entered_at"], tuple(m["products"])
            )


class Traffic:
    """Events like the freshness load: 80% from visitors mid-session, the rest new sessions."""

    def __init__(self, sites: list[str], seed: int = 3) -> None:
        self._rng = random.Random(seed)
        self._sites = sites
        self._active: collections.deque[tuple[str, str]] = collections.deque(maxlen=2000)

    def _visitor(self) -> tuple[str, str]:
        rng = self._rng
        if self._active and rng.random() < 0.8:
            return self._active[rng.randrange(len(self._active))]
        visitor = (rng.choice(self._sites), f"{rng.getrandbits(64):016x}")
        self._active.append(visitor)
        return visitor

    def events(self, n: int, at: float) -> tuple[list[bytes], list[bytes]]:
        """(keys, values) of ``n`` canonical events received from ``at`` on."""
        rng, out = self._rng, []
        for i in range(n):
            site, visitor = self._visitor()
            kind = rng.choices([t for t, _ in MIX], [w for _, w in MIX])[0]
            price, cat = rng.randrange(5, 400), rng.choice(CATEGORIES)
            props: dict[str, Any] = {}
            if kind in ("product_view", "add_to_cart", "checkout", "purchase"):
                pid = f"p{int(PRODUCTS * rng.random() ** 2)}"
                props = {"product_id": pid, "category": cat, "price": price, "value": price}
            url = rng.choice(
                ["https://x.example/", "https://x.example/contact", f"https://x.example/c/{cat}"]
            )
            out.append(event(site, visitor, kind, at + i / 10_000, properties=props, url=url))
        keys, values = encoded(out)
        return list(keys), list(values)


def _collector_as_in_the_segmenter() -> None:
    """The garbage collector settings `leadback segmenter` runs rounds with."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _engine(audiences: int) -> tuple[ClickHouseStore, AudienceEngine]:
    workdir = tempfile.mkdtemp(prefix="leadback-memory-round-")
    store = ClickHouseStore(ClickHouseSettings(url=f"chdb://{workdir}", database="leadback"))
    await migrate(store)
    engine = AudienceEngine(store, RecordingPublisher(), clock=ManualClock(NOW))
    await engine.start()
    for spec in parse_audiences(yaml.safe_load(many_audiences_yaml(audiences))):
        await engine.repository.put(spec)
    await engine.tick()
    return store, engine


async def run_product(rounds: int, n: int, audiences: int) -> list[dict[str, float]]:
    """The same rounds through the product: the insert with the feed, then the engine's round
    (identity lookups, state and memberships reads, rules, change log, memberships, due
    times; the publisher records instead of sending)."""
    store, engine = await _engine(audiences)
    traffic = Traffic(audience_sites(audiences))
    clock = engine._clock
    assert isinstance(clock, ManualClock)
    _collector_as_in_the_segmenter()
    results = []
    for r in range(rounds):
        keys, values = traffic.events(n, NOW + r)
        clock.advance(NOW + r - clock.now())
        t0 = time.perf_counter()
        await store.insert_json_rows("events", b"\n".join(values), dedup_token=f"e{r}")
        t1 = time.perf_counter()
        await engine.on_batch(keys, values, f"round-{r}")
        t2 = time.perf_counter()
        results.append({"insert_with_feed_ms": (t1 - t0) * 1000, "round_ms": (t2 - t1) * 1000})
    await engine.close()
    await store.close()
    return results


async def run(rounds: int, n: int, audiences: int) -> list[dict[str, float]]:
    """The in-memory rounds (see the module's text)."""
    store, engine = await _engine(audiences)
    # No feed view: the round writes its signal rows itself.
    for (view,) in await store.query(
        "SELECT name FROM system.tables WHERE database = 'leadback' "
        "AND name LIKE 'person_signals_feed_%'"
    ):
        await store.command(f"DROP VIEW leadback.{view}")
    sites = audience_sites(audiences)
    memory, traffic = MemoryRound(engine, sites), Traffic(sites)
    _collector_as_in_the_segmenter()
    results = []
    for r in range(rounds):
        _, values = traffic.events(n, NOW + r)
        t0 = time.perf_counter()
        outcome, rows = memory.run(values, int((NOW + r) * 1000))
        t1 = time.perf_counter()
        memory.applied(outcome)
        t2 = time.perf_counter()
        await store.insert_json_rows("events", b"\n".join(values), dedup_token=f"e{r}")
        t3 = time.perf_counter()
        await store.insert_json_rows("person_signals", b"\n".join(rows), dedup_token=f"s{r}")
        t4 = time.perf_counter()
        if outcome.changes:
            body = orjson.dumps(outcome.changes)
            await store.insert_json_rows("audience_changes", body, dedup_token=f"c{r}")
        await store.insert_json_rows(
            "memberships", b"\n".join(outcome.memberships), dedup_token=f"m{r}"
        )
        t5 = time.perf_counter()
        results.append(
            {
                "python_ms": (t1 - t0) * 1000,
                "events_insert_ms": (t3 - t2) * 1000,
                "signals_insert_ms": (t4 - t3) * 1000,
                "changes_memberships_ms": (t5 - t4) * 1000,
                "signal_rows": len(rows),
                "changes": len(outcome.changes),
            }
        )
    await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--audiences", type=int, default=500)
    args = parser.parse_args()
    configure_logging("warning")
    print(f"rounds of {args.events:,} events, {args.audiences} audiences; CPU {cpu_model()}")
    totals = {}
    for label, runner in (("product", run_product), ("in memory", run)):
        results = asyncio.run(runner(args.rounds, args.events, args.audiences))
        warm = results[2:] or results  # the first rounds fill the sessions and memberships
        print(f"{label}: medians of rounds 3 to {len(results)}")
        for key in results[0]:
            print(f"  {key:24s} {statistics.median(r[key] for r in warm):10.1f}")
        totals[label] = sum(
            statistics.median(r[k] for r in warm) for k in results[0] if k.endswith("_ms")
        )
        per_event = 1000 * totals[label] / args.events
        print(f"  total {totals[label]:.0f} ms: {per_event:.1f} us per event")
    print(f"in memory / product, same run: {totals['in memory'] / totals['product']:.2f}")


if __name__ == "__main__":
    main()
