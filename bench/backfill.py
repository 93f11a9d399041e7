"""Backfill of one new audience over stored history: time, events read, peak memory.

A copy of the cached history (``bench/history_cache.py``) gets the 20 bench audiences live, then
one new audience is applied; the engine brings it live as the segmenter would (feed view,
backfill of its new signals range by range, evaluation of everyone of the site range by range).
Peak memory: this process's resident set (chDB runs in it), sampled every 50 ms while the new
audience is brought live, against the resident set before.

    python -m bench.backfill [--events 50000000] [--rows-per-range 1000000]

Prints one line per phase and writes bench/results/backfill-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.audience_sets import many_audiences_yaml
from bench.common import cpu_model
from bench.history_cache import clone, ensure_history
from leadback.audiences.changes import ChangeRecord
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.rules import parse_audience, parse_audiences
from leadback.logs import configure_logging
from leadback.settings import ClickHouseSettings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

# Its event tests are new (no bench audience has them): the backfill reads the site's history.
NEW_AUDIENCE = {
    "id": "bench_new",
    "site": "shop",
    "name": "Added an expensive coat twice in 60 days, never checked out after",
    "rule": {
        "all": [
            {
                "did": {
                    "event": "add_to_cart",
                    "count": 2,
                    "within": "60d",
                    "where": [
                        {"property": "category", "op": "eq", "value": "coats"},
                        {"property": "price", "op": "gte", "value": 120},
                    ],
                }
            },
            {
                "then_not": {
                    "did": {
                        "event": "add_to_cart",
                        "where": [{"property": "price", "op": "gte", "value": 120}],
                    },
                    "then": {
                        "event": "checkout",
                        "where": [{"property": "value", "op": "gt", "value": 0}],
                    },
                }
            },
        ]
    },
}


class CountingPublisher:
    """Counts the changes the engine publishes (the broker is not what is measured here)."""

    def __init__(self) -> None:
        self.records = 0

    async def publish(self, records: list[ChangeRecord]) -> None:
        self.records += len(records)


def _rss_mb() -> float:
    """This process's resident set now (chDB's memory included)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRss:
    """Samples the resident set every 50 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def run(events: int, rows_per_range: int, skew: float) -> dict[str, Any]:
    home, _ = ensure_history(events, skew=skew)
    target = Path(tempfile.mkdtemp(prefix="lb-backfill-")) / "chdb"
    clone(home, target)
    store = ClickHouseStore(ClickHouseSettings(url=f"chdb://{target}", database="leadback"))
    try:
        await migrate(store)
        publisher = CountingPublisher()
        engine = AudienceEngine(store, publisher)
        engine.backfill.rows_per_range = rows_per_range
        for spec in parse_audiences(yaml.safe_load(many_audiences_yaml(20))):
            await engine.repository.put(spec)
        started = time.perf_counter()
        await engine.start()
        await engine.refreshed()
        first = time.perf_counter() - started
        print(f"20 audiences live over {events:,} events in {first:.1f} s")
        rss_before = _rss_mb()
        published = publisher.records
        await engine.repository.put(parse_audience(NEW_AUDIENCE))
        started = time.perf_counter()
        with PeakRss() as sampled:
            await engine.tick()
        took = time.perf_counter() - started
        rss_after = sampled.peak
        rows = await store.query(
            "SELECT phase, done, total, rows_read FROM leadback.audience_refreshes FINAL "
            "WHERE audience_id = 'bench_new'"
        )
        phase, done, total, rows_read = rows[0]
        result = {
            "cpu": cpu_model(),
            "at": datetime.now(UTC).isoformat(),
            "events": events,
            "skew": skew,
            "first_20_audiences_s": round(first, 2),
            "new_audience_s": round(took, 2),
            "events_read": int(rows_read),
            "evaluation_ranges": int(total),
            "changes_published": publisher.records - published,
            "rss_mb_before": round(rss_before),
            "peak_rss_mb_during": round(rss_after),
            "phase": phase,
            "done": int(done),
        }
        print(
            f"new audience over {events:,} events: live in {took:.1f} s, {int(rows_read):,} events "
            f"read by the backfill, {int(total)} evaluation ranges, "
            f"{result['changes_published']:,} enters published; resident set {rss_before:.0f} MB "
            f"before, at most {rss_after:.0f} MB during; CPU {result['cpu']}"
        )
        await engine.close()
        return result
    finally:
        await store.close()
        shutil.rmtree(target.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--rows-per-range", type=int, default=1_000_000)
    parser.add_argument("--skew", type=float, default=3.0, help="as bench.audiences --skew")
    args = parser.parse_args()
    configure_logging("warning")
    result = asyncio.run(run(args.events, args.rows_per_range, args.skew))
    out = Path(__file__).parent / "results" / f"backfill-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"  raw results {out}")


if __name__ == "__main__":
    main()
