"""Audience benchmarks: the cost of 20 live audiences in the segmenter, and freshness.

1. **Cost**: a topic preloaded with realistic events (three sites, thousands of visitors, a mix
   of page views, product views, carts, checkouts, purchases, leads and identifies over the last
   week) is consumed into a fresh chDB database by the segmenter (in this process) with no
   audience, then with 20 audiences; events/s of each and their ratio, per round.
2. **Freshness** (:mod:`bench.freshness`): ingest and segmenter run as processes (as ``leadback
   up`` runs them) with N audiences plus a probe audience, on a database holding H stored events;
   a steady pixel load of R pixels/s runs while probe pixels qualify new visitors; the time from
   each probe's HTTP response to its ``enter`` on the change topic (p50, p99), with the
   segmenter's events/s, its evaluation statement median (from /metrics) and its start-up time
   (every audience evaluated over the whole history).

    python -m bench.audiences [--events 200000] [--rounds 3] [--seconds 20] [--rates 500,1000]
        [--history 0,10M,50M] [--audiences 20,100,500] [--matrix] [--no-cost] [--reuse-startup]

Defaults: the cost part and freshness with no history and 20 audiences at 500 and 1,000
pixels/s (a few minutes). ``--history``, ``--audiences`` and ``--rates`` take comma-separated
lists and run every combination. ``--matrix`` runs history 0, 10M and 50M x 20, 100 and 500
audiences at 500 pixels/s, plus 5,000 pixels/s with 20 and with 500 audiences at 50M; it skips
the cost part and runs one round per point unless ``--rounds`` says otherwise. Histories are
filled once (``python -m bench.history``) into ``bench/.data/history-<events>/`` and copied (hard
links) for each run; see :mod:`bench.history_cache` for when they are filled again.
``--reuse-startup`` keeps each point's database once its audiences are live and starts later
runs of the point from that copy (minutes saved per run on a long history).

Prints a table (with the CPU model) and writes raw results to
bench/results/audiences-<time>.json, and with matplotlib (``pip install -e '.[bench]'``) a plot
of freshness against stored events and pixel rate to bench/results/audiences-<time>.png
(``python -m bench.plot <json>`` draws it again).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.audience_sets import audiences_yaml
from bench.common import CORE_CLIENT, CORE_SERVER, cpu_model, pin, pin_cores
from bench.freshness import Case, freshness
from bench.history import CATEGORIES, MIX
from bench.history_cache import ensure_history
from bench.procs import all_cores
from leadback.audiences.repository import AudienceRepository
from leadback.audiences.rules import parse_audiences
from leadback.broker import EmbeddedBroker
from leadback.events import empty_click_ids, empty_utm, event_key, format_ts
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.kafka.topics import ensure_topics
from leadback.logs import configure_logging
from leadback.segmenter.service import build_engine, build_segmenter, change_producer
from leadback.service_settings import AudienceSettings, SegmenterSettings
from leadback.settings import ClickHouseSettings, KafkaSettings, Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

__all__ = ["SITES", "audiences_yaml", "make_events"]

SITES = {"shop": 0.6, "news": 0.25, "saas": 0.15}
VISITORS_PER_SITE = 4000
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
MATRIX_HISTORY = [0, 10_000_000, 50_000_000]
MATRIX_AUDIENCES = [20, 100, 500]
MATRIX_RATE = 500.0
MATRIX_FAST = [(50_000_000, 20, 5000.0), (50_000_000, 500, 5000.0)]


def make_events(n: int, now: float, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of realistic canonical events over the last week."""
    rng = random.Random(seed)
    sites = list(SITES)
    types = [t for t, _ in MIX]
    weights = [w for _, w in MIX]
    out = []
    for i in range(n):
        site = rng.choices(sites, weights=[SITES[s] for s in sites])[0]
        visitor = f"{site[:2]}{rng.randrange(VISITORS_PER_SITE):05d}{'0' * 22}"
        etype = rng.choices(types, weights=weights)[0]
        at = now - rng.random() * 7 * 86_400
        product = f"sku-{rng.randrange(500)}"
        props: dict[str, Any] = {}
        if etype in ("product_view", "add_to_cart", "remove_from_cart"):
            props = {"product_id": product, "category": rng.choice(CATEGORIES), "value": 20.0}
        elif etype in ("checkout", "purchase"):
            props = {
                "value": round(rng.uniform(10, 300), 2),
                "currency": "EUR",
                "items": [{"product_id": product, "quantity": 1}],
            }
        user_id = f"user-{visitor[:9]}" if etype == "identify" else None
        event = {
            "schema_version": 1,
            "event_id": f"bench-{seed}-{i}",
            "site_id": site,
            "visitor_id": visitor,
            "type": etype,
            "name": "video_play" if etype == "custom" else None,
            "sent_at": None,
            "received_at": format_ts(at),
            "anonymous_id": visitor,
            "user_id": user_id,
            "traits": {},
            "url": f"https://{site}.example/{'contact' if rng.random() < 0.03 else 'p'}/{i % 97}",
            "referrer": "https://www.google.com/",
            "utm": empty_utm(),
            "click_ids": empty_click_ids(),
            "properties": props,
            "context": {"user_agent": CHROME, "ip": "203.0.113.0", "language": "en"},
            "consent": {
                "status": "granted",
                "purposes": ["all"],
                "gpc": False,
                "dnt": False,
                "tracking": True,
            },
            "bot": False,
            "source": "pixel",
        }
        out.append((event_key(site, visitor), orjson.dumps(event)))
    return out


async def preload(broker: EmbeddedBroker, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaRecordProducer(
        **producer_options(
            KafkaSettings(bootstrap=broker.bootstrap), broker.bootstrap, embedded=True
        )
    )
    await producer.start()
    futures = [await producer.send(topic, k, v) for k, v in records]
    for f in futures:
        await f
    await producer.stop()


async def consume_once(
    broker: EmbeddedBroker, workdir: Path, topic: str, n: int, *, audiences: str | None
) -> dict[str, Any]:
    """Consume the preloaded topic into a fresh database; events/s from partition assignment."""
    rid = uuid.uuid4().hex[:8]
    store = ClickHouseStore(
        ClickHouseSettings(url=f"chdb://{workdir / 'chdb'}", database=f"cost_{rid}")
    )
    await migrate(store)
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap=broker.bootstrap,
            topic_events=topic,
            topic_invalid=f"{topic}-invalid",
            topic_changes=f"{topic}-changes-{rid}",
        ),
        segmenter=SegmenterSettings(group_id=f"cost-{rid}", metrics_port=0),
        audiences=AudienceSettings(enabled=audiences is not None),
    )
    producer = KafkaRecordProducer(
        **producer_options(settings.kafka, broker.bootstrap, embedded=True)
    )
    await producer.start()
    engine = None
    changes = None
    if audiences is not None:
        repo = AudienceRepository(store)
        for spec in parse_audiences(yaml.safe_load(audiences)):
            await repo.put(spec)
        changes = change_producer(settings, broker.bootstrap, embedded=True)
        engine = build_engine(settings, store, changes)
        await engine.start()
    seg = build_segmenter(settings, store, broker.bootstrap, producer, engine)
    pin(0, CORE_SERVER)
    stop = asyncio.Event()
    task = asyncio.create_task(seg.run(stop))
    join = time.perf_counter()
    while not seg.assignment and time.perf_counter() - join < 60:
        await asyncio.sleep(0.01)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    while seg.stats.events_inserted < n and time.perf_counter() - t0 < 600:
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stop.set()
    await task
    pin(0, CORE_CLIENT)
    members = 0
    if engine is not None:
        rows = await store.query(
            f"SELECT count() FROM {store.database}.memberships FINAL WHERE state = 'in'"
        )
        members = int(rows[0][0])
    await store.command(f"DROP DATABASE {store.database}")
    await store.close()
    await producer.stop()
    if changes is not None:
        changes.close()
    return {
        "events": seg.stats.events_inserted,
        "seconds": seconds,
        "events_per_s": seg.stats.events_inserted / seconds,
        "events_per_cpu_s": seg.stats.events_inserted / max(cpu, 1e-9),
        "batches": seg.stats.batches_inserted,
        "members": members,
        "changes": engine.stats.changes if engine else 0,
    }


def parse_counts(text: str) -> list[int]:
    """``"0,10M,50M"`` or ``"1000000,1_000"`` -> integers (k and M suffixes)."""
    out = []
    for item in text.split(","):
        item = item.strip().replace("_", "").lower()
        mult = {"k": 1_000, "m": 1_000_000}.get(item[-1:], 1)
        out.append(int(float(item[:-1] if mult > 1 else item) * mult))
    return out


def cases_from(args: argparse.Namespace) -> list[Case]:
    """The freshness points to run, grouped by history size (each filled or copied once)."""
    if args.matrix:
        cases = [
            Case(h, a, MATRIX_RATE) for h, a in itertools.product(MATRIX_HISTORY, MATRIX_AUDIENCES)
        ]
        cases += [Case(h, a, r) for h, a, r in MATRIX_FAST]
    else:
        cases = [
            Case(h, a, float(r))
            for h, a, r in itertools.product(
                parse_counts(args.history), parse_counts(args.audiences), parse_counts(args.rates)
            )
        ]
    return sorted(cases, key=lambda c: (c.history, c.audiences, c.rate))


def _fmt(value: float | None, unit: str = "s", digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f} {unit}"


def keeps_up(f: dict[str, Any], seconds: float) -> bool:
    """Whether the segmenter kept up with the load: every probe came back and, when the load
    stopped, fewer events were waiting than half the load's duration brings (at least 5 s of
    it). Else freshness grows with the length of the run, and the figures say how far behind it
    fell in that time, not a steady state."""
    lag = f.get("lag_s", math.nan)
    return f["arrived"] == f["probes"] and not math.isnan(lag) and lag <= max(5.0, seconds / 2)


def round_line(f: dict[str, Any], seconds: float) -> str:
    """One freshness result as a line."""
    behind = f", {f['lag_s']:.1f} s behind at the end" + (
        "" if keeps_up(f, seconds) else ": FALLS BEHIND"
    )
    missing = f["probes"] - f["arrived"]
    lower = f", {missing} never came: percentiles of those that did" if missing else ""
    startup = (
        f"start-up {f['startup_s']:.1f} s + {f['settle_s']:.1f} s to bring the audiences live "
        "(backfill, evaluation) and publish"
    )
    if f.get("reused_startup"):
        startup = f"started from a kept copy (its start-up took {f['startup_s']:.1f} s)"
    return (
        f"freshness p50 {_fmt(f['p50_s'])}, p99 {_fmt(f['p99_s'])}, max {_fmt(f['max_s'])} "
        f"({f['arrived']}/{f['probes']} probes{lower}; load {f['load_rps']:,.0f} pixels/s, "
        f"segmenter {f.get('segmenter_events_per_s', float('nan')):,.0f} events/s{behind}; "
        "evaluation "
        "statement "
        f"median {_fmt(f.get('eval_median_s'))} [{f.get('eval_median_source', '-')}], round "
        f"median {_fmt(f.get('round_median_s'))} [{f.get('round_median_source', '-')}]; "
        f"{startup}, "
        f"warm-up {f['warmup_s']:.1f} s; pixel->evaluation p50 "
        f"{_fmt(f['pixel_to_evaluation_p50_s'])}; during the load the segmenter used "
        f"{f.get('segmenter_cores', float('nan')):.2f} of a core "
        f"({_threads(f.get('segmenter_threads_cores', {}))}), ingest "
        f"{f.get('ingest_cores', float('nan')):.2f}, the load "
        f"({f.get('load_sender', 'python')}, probes, change watcher) "
        f"{f.get('load_cores', float('nan')):.2f})"
    )


def _threads(cores: dict[str, float]) -> str:
    """The busiest threads of a process, by name."""
    return ", ".join(f"{name} {c:.2f}" for name, c in list(cores.items())[:5]) or "-"


def summarize(case: Case, rounds: list[dict[str, Any]], cpu: str, seconds: float) -> dict[str, Any]:
    """Medians over a point's rounds."""

    def med(key: str) -> float | None:
        values = [r[key] for r in rounds if r.get(key) is not None and not math.isnan(r[key])]
        return statistics.median(values) if values else None

    return {
        "history": case.history,
        "audiences": case.audiences,
        "sites": rounds[0]["sites"],
        "rate": case.rate,
        "rounds": len(rounds),
        "p50_s": med("p50_s"),
        "p99_s": med("p99_s"),
        "max_s": med("max_s"),
        "load_rps": med("load_rps"),
        "segmenter_events_per_s": med("segmenter_events_per_s"),
        "evaluations_per_s": med("evaluations_per_s"),
        "eval_median_s": med("eval_median_s"),
        "eval_median_source": rounds[0].get("eval_median_source"),
        "round_median_s": med("round_median_s"),
        "round_median_source": rounds[0].get("round_median_source"),
        "startup_s": med("startup_s"),
        "lag_s": med("lag_s"),
        "keeps_up": all(keeps_up(r, seconds) for r in rounds),
        "cpu_model": cpu,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000, help="cost part: events")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --matrix)")
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness load time")
    parser.add_argument(
        "--rates", default="500,1000", help="steady pixels/s of the freshness load, comma-separated"
    )
    parser.add_argument(
        "--history", default="0", help="stored events before the freshness run, e.g. 0,10M,50M"
    )
    parser.add_argument("--audiences", default="20", help="audiences, e.g. 20,100,500")
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="history 0,10M,50M x audiences 20,100,500 at 500 px/s, and 5,000 px/s with 20 "
        "and 500 audiences at 50M (implies --no-cost)",
    )
    parser.add_argument("--no-cost", action="store_true", help="skip the cost part")
    parser.add_argument(
        "--history-max-age-days", type=float, default=7.0, help="refill older cached histories"
    )
    parser.add_argument(
        "--skew",
        type=float,
        default=3.0,
        help="history visitors drawn as floor(N * r ** skew): 3 gives the heaviest visitor 1.7%% "
        "of all events at 10M (a bot, on a real site), 1.5 about 0.03%%",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=7200.0, help="segmenter start-up limit (s)"
    )
    parser.add_argument(
        "--reuse-startup",
        action="store_true",
        help="with a history: keep each point's database once its audiences are live "
        "(bench/.data/ready-*, at most 6 h old) and start later runs of that point from it "
        "(a 50M point: about 2 minutes instead of 13; 20 s of warm-up load)",
    )
    parser.add_argument(
        "--shared-cores",
        action="store_true",
        help="freshness: the stack (segmenter, ingest), the broker and the load all on every "
        "core, as on a machine that runs Leadback with its load beside it (default: the stack "
        "on core 0, the broker and the load on core 1)",
    )
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="freshness: send the load from the benchmark's Python process (asyncio streams, "
        "as before 2026-12-01) instead of wrk: about 0.45 of a core at 5,000 pixels/s that "
        "the stack does not get",
    )
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (1 if args.matrix else 3)
    run_cost = not (args.no_cost or args.matrix)
    configure_logging("warning")
    client_core = all_cores() if args.shared_cores else {CORE_CLIENT}
    pin_cores(0, client_core)
    cpu = cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} cores")
    cases = cases_from(args)
    cost: list[dict[str, Any]] = []
    fresh: list[dict[str, Any]] = []
    matrix: list[dict[str, Any]] = []
    histories: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="leadback-bench-") as tmp, EmbeddedBroker() as broker:
        pin_cores(broker.pid or 0, client_core)
        if run_cost:
            records = make_events(args.events, time.time())
            audiences = audiences_yaml(list(SITES))
            topic = f"cost-{uuid.uuid4().hex[:8]}"
            await ensure_topics(broker.bootstrap, {topic: 6, f"{topic}-invalid": 1})
            await preload(broker, topic, records)
            for i in range(rounds):
                none = await consume_once(broker, Path(tmp), topic, args.events, audiences=None)
                twenty = await consume_once(
                    broker, Path(tmp), topic, args.events, audiences=audiences
                )
                ratio = twenty["events_per_s"] / none["events_per_s"]
                cost.append({"none": none, "twenty": twenty, "ratio": ratio})
                print(
                    f"round {i + 1}: segmenter {none['events_per_s']:,.0f} ev/s without "
                    f"audiences, {twenty['events_per_s']:,.0f} ev/s with 20 ({ratio:.2f}x; "
                    f"{twenty['members']} members, {twenty['changes']} changes)"
                )
        for size, group in itertools.groupby(cases, key=lambda c: c.history):
            history = None
            if size:
                history = ensure_history(
                    size, skew=args.skew, max_age_days=args.history_max_age_days
                )
                histories[str(size)] = history[1]
            for case in group:
                print(f"{case.label()}:")
                results = []
                for i in range(rounds):
                    try:
                        f = await freshness(
                            broker,
                            Path(tmp),
                            case,
                            seconds=args.seconds,
                            history=history,
                            startup_timeout_s=args.startup_timeout,
                            reuse_startup=args.reuse_startup,
                            stack_cores=all_cores() if args.shared_cores else None,
                            python_load=args.python_load,
                        )
                    except RuntimeError as exc:
                        # A segmenter that dies or never starts (memory, time) on one point of
                        # a long matrix: recorded, and the other points still run.
                        failures.append({**vars(case), "round": i + 1, "error": str(exc)})
                        print(f"  round {i + 1}: FAILED: {exc}")
                        continue
                    results.append(f)
                    fresh.append(f)
                    print(f"  round {i + 1}: {round_line(f, args.seconds)}")
                if not results:
                    continue
                summary = summarize(case, results, cpu, args.seconds)
                matrix.append(summary)
                print(
                    f"  => p50 {_fmt(summary['p50_s'])}, p99 {_fmt(summary['p99_s'])}; segmenter "
                    f"{summary['segmenter_events_per_s'] or float('nan'):,.0f} events/s; "
                    f"evaluation median {_fmt(summary['eval_median_s'])}, round median "
                    f"{_fmt(summary['round_median_s'])}; CPU {cpu}"
                )
    med: dict[str, Any] = {}
    if cost:
        med = {
            "events_per_s_none": statistics.median(c["none"]["events_per_s"] for c in cost),
            "events_per_s_twenty": statistics.median(c["twenty"]["events_per_s"] for c in cost),
            "ratio": statistics.median(c["ratio"] for c in cost),
        }
        print(f"\nmedian of {rounds} rounds ({args.events:,} events, 3 sites, 20 audiences)")
        print(f"  segmenter, no audiences   {med['events_per_s_none']:>10,.0f} events/s")
        print(f"  segmenter, 20 audiences   {med['events_per_s_twenty']:>10,.0f} events/s")
        print(f"  ratio (same round)        {med['ratio']:>10.2f}")
    print(f"\nfreshness pixel->enter, median of {rounds} round(s) (goal: p99 < 1 s); CPU {cpu}")
    print(
        f"  {'stored events':>14} {'audiences':>9} {'sites':>5} {'px/s':>6} {'p50 s':>7} "
        f"{'p99 s':>7} {'seg ev/s':>9} {'eval med s':>10} {'round med s':>11} {'start-up s':>10} "
        f"{'lag s':>6} keeps up"
    )
    for m in matrix:
        print(
            f"  {m['history']:>14,} {m['audiences']:>9} {m['sites']:>5} {m['rate']:>6,.0f} "
            f"{_fmt(m['p50_s'], '', 3):>7} {_fmt(m['p99_s'], '', 3):>7} "
            f"{m['segmenter_events_per_s'] or float('nan'):>9,.0f} "
            f"{_fmt(m['eval_median_s'], '', 4):>10} {_fmt(m['round_median_s'], '', 4):>11} "
            f"{m['startup_s'] or float('nan'):>10.1f} {m['lag_s'] or float('nan'):>6.1f} "
            f"{'yes' if m['keeps_up'] else 'no'}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"audiences-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_bytes(
        orjson.dumps(
            {
                "args": vars(args),
                "cpu_model": cpu,
                "cores": os.cpu_count(),
                "cost": cost,
                "freshness": fresh,
                "median": med,
                "matrix": matrix,
                "histories": histories,
                "failures": failures,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    print(f"  raw results {path}")
    try:
        from bench.plot import plot_results
    except ImportError:
        print("  (no plot: matplotlib is not installed; pip install -e '.[bench]')")
    else:
        print(f"  plot {plot_results(path)}")


if __name__ == "__main__":
    asyncio.run(main())
