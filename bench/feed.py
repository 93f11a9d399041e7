"""The signal feed's cost per insert, against the same insert with no feed.

Every insert into ``events`` runs the feed view (``leadback.audiences.signals.feed_sql``), and
ClickHouse analyses the view's statement each time: its cost follows the size of that
statement, not only the rows. For the 20 bench audiences and for N more over several sites
(``bench.audience_sets``), realistic blocks of 250 and 2,500 events (the sites' visitors, the
event mix of the history, properties the filters read) are inserted into one chDB database:
first with no view (the anchor, in the same run), then with each feed. Median of ``--inserts``
per point, every point measured ``--rounds`` times alternated.

    python -m bench.feed [--audiences 20,500] [--inserts 5] [--rounds 2]

Prints per point the median time and its ratio to the insert with no feed; writes
``bench/results/feed-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.audience_sets import many_audiences_yaml
from bench.common import cpu_model
from bench.history import CATEGORIES, MIX, PRODUCTS
from leadback.audiences.compiler import compile_rule
from leadback.audiences.person_state import ensure_view
from leadback.audiences.rules import AudienceSpec, parse_audiences
from leadback.audiences.signals import Signal, by_id, feed_name, feed_sql
from leadback.events import empty_click_ids, empty_utm, format_ts
from leadback.logs import configure_logging
from leadback.settings import ClickHouseSettings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

BLOCKS = (250, 2_500)


def signals_of(n: int) -> tuple[list[Signal], list[str]]:
    """The signals the feed of ``n`` bench audiences matches, and their sites."""
    specs = parse_audiences(yaml.safe_load(many_audiences_yaml(n)))
    by_site: dict[str, dict[str, AudienceSpec]] = {}
    for spec in specs:
        by_site.setdefault(spec.site, {})[spec.id] = spec
    found: set[Signal] = set()
    for spec in specs:
        found |= compile_rule(spec, by_site[spec.site]).signals
    return by_id(found), sorted(by_site)


def block(rng: random.Random, sites: list[str], size: int, at: float) -> bytes:
    """``size`` canonical events of many visitors over ``sites``."""
    types = [t for t, _ in MIX]
    weights = [w for _, w in MIX]
    lines = []
    for i in range(size):
        etype = rng.choices(types, weights)[0]
        event: dict[str, Any] = {
            "schema_version": 1,
            "event_id": f"{rng.getrandbits(64):016x}",
            "site_id": rng.choice(sites),
            "visitor_id": f"{rng.getrandbits(64):016x}",
            "type": etype,
            "received_at": format_ts(at + i / 1000),
            "url": rng.choice(["https://shop.example/", "https://shop.example/contact"]),
            "utm": empty_utm(),
            "click_ids": empty_click_ids(),
            "properties": {
                "product_id": f"p{rng.randrange(PRODUCTS)}",
                "category": rng.choice(CATEGORIES),
                "value": rng.randrange(5, 400),
            },
            "context": {"user_agent": "Mozilla/5.0", "ip": "192.0.2.0"},
            "bot": False,
            "source": "pixel",
        }
        lines.append(orjson.dumps(event))
    return b"\n".join(lines)


async def median_insert(store: ClickHouseStore, body: bytes, inserts: int) -> float:
    took = []
    for _ in range(inserts):
        token = f"{time.time_ns()}"
        started = time.perf_counter()
        await store.insert_json_rows("events", body, dedup_token=token)
        took.append(time.perf_counter() - started)
    return statistics.median(took)


async def run(audiences: list[int], inserts: int, rounds: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    store = ClickHouseStore(ClickHouseSettings(url=f"chdb://{directory}", database="bench"))
    try:
        await migrate(store)
        await ensure_view(store)  # the feed's rows also merge into `person_state`, as in rounds
        feeds = {n: signals_of(n) for n in audiences}
        sites = sorted({s for _, site_list in feeds.values() for s in site_list})
        rng = random.Random(7)
        bodies = {size: block(rng, sites, size, time.time() - 3600) for size in BLOCKS}
        points: dict[str, list[float]] = {}
        for _ in range(rounds):
            for size, body in bodies.items():
                points.setdefault(f"none/{size}", []).append(
                    await median_insert(store, body, inserts)
                )
            for n, (signals, _) in feeds.items():
                await store.command(feed_sql(store.database, signals))
                for size, body in bodies.items():
                    points.setdefault(f"{n}/{size}", []).append(
                        await median_insert(store, body, inserts)
                    )
                await store.command(f"DROP VIEW {store.database}.{feed_name(signals)}")
        rows = []
        for n in [0, *audiences]:
            key = "none" if n == 0 else str(n)
            signals = feeds[n][0] if n else []
            for size in BLOCKS:
                ms = statistics.median(points[f"{key}/{size}"]) * 1000
                anchor = statistics.median(points[f"none/{size}"]) * 1000
                rows.append(
                    {
                        "audiences": n,
                        "signals": len(signals),
                        "event_tests": len({s.predicate for s in signals}),
                        "rows": size,
                        "median_ms": round(ms, 1),
                        "runs_ms": [round(x * 1000, 1) for x in points[f"{key}/{size}"]],
                        "ratio_to_no_feed": round(ms / anchor, 2),
                    }
                )
        return {"cpu": cpu_model(), "at": datetime.now(UTC).isoformat(), "points": rows}
    finally:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--audiences", default="20,500")
    parser.add_argument("--inserts", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    configure_logging("warning")
    audiences = [int(x) for x in args.audiences.split(",")]
    result = asyncio.run(run(audiences, args.inserts, args.rounds))
    print(f"feed cost per insert into events; CPU {result['cpu']}")
    print("  audiences signals tests   rows  median ms  x no feed  runs")
    for p in result["points"]:
        print(
            f"  {p['audiences']:>9} {p['signals']:>7} {p['event_tests']:>5} {p['rows']:>6,} "
            f"{p['median_ms']:>10.1f} {p['ratio_to_no_feed']:>10.2f}  {p['runs_ms']}"
        )
    out = Path(__file__).parent / "results" / f"feed-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"  raw results {out}")


if __name__ == "__main__":
    main()
