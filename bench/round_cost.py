"""What one segmenter round costs on a copy of a benchmark database, statement by statement.

The freshness bench measures a round under load, where the machine's other processes, merges
and the rounds' own spiral (a slow round gathers more events) blur which part costs what. This
replays rounds the way the segmenter runs them, on one core with nothing else running: a block
of events like the freshness load (visitors returning from the stored history with its skew,
sessions, new visitors) inserted into ``events`` (the feed and its views run), then
``AudienceEngine.on_round`` for the block's visitors. Every ClickHouse call is timed (wall and
the process's CPU, chDB's threads included); the first ``--skip`` rounds are left out of the
medians (they bring the history's persons in for the first time). The garbage collector is
set as the segmenter sets it (:func:`leadback.segmenter.service.tune_collector`): with Python's
defaults it took a fifth of a round here.

    taskset -c 0 python -m bench.round_cost \\
        --copy bench/.data/ready-history-50000000-skew1.5-<hash>/chdb

``--copy``: a database kept by ``bench.audiences --reuse-startup`` (copied to a temporary
directory first: the copy itself is not changed). Prints per round its wall and CPU time, the
visitors and changes, then the median of each statement.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.audience_kit import RecordingPublisher

from bench.common import cpu_model
from bench.history import HistoryShape
from bench.history_cache import _link_or_copy
from bench.memory_round import Traffic
from leadback.audiences.engine import AudienceEngine
from leadback.logs import configure_logging
from leadback.segmenter.service import tune_collector
from leadback.settings import ClickHouseSettings
from leadback.store import client as client_mod
from leadback.store.migrations import migrate

_calls: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
_timing = [False]


def _time_store_calls() -> None:
    """Wrap the adapter's calls: (wall ms, process CPU ms) per statement shape."""
    store_class = client_mod.ClickHouseStore
    for name in ("query", "query_columns", "command", "insert_json_rows"):
        original = getattr(store_class, name)

        def timed(orig: Any, kind: str) -> Any:
            async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    return await orig(self, *args, **kwargs)
                finally:
                    if _timing[0]:
                        text = " ".join(str(args[0] if args else "").split())
                        shape = re.sub(r"'[^']*'|[0-9]+", "#", text)[:64]
                        label = f"{kind[:6]} {shape}"
                        _calls[label].append(
                            (
                                (time.perf_counter() - wall) * 1000,
                                (time.process_time() - cpu) * 1000,
                            )
                        )

            return call

        setattr(store_class, name, timed(original, name))


class HistoryTraffic(Traffic):
    """:class:`bench.memory_round.Traffic` (80% of events from visitors mid-session) whose
    other visitors return from the stored history (75%, with its skew) or are new."""

    def __init__(self, shape: HistoryShape, sites: set[str], seed: int = 5) -> None:
        super().__init__(sorted(sites), seed)
        self._shape = shape
        self._site_set = sites

    def _visitor(self) -> tuple[str, str]:
        rng = self._rng
        if self._active and rng.random() < 0.8:
            return self._active[rng.randrange(len(self._active))]
        if rng.random() < 0.75:
            visitor = self._shape.returning_visitor(rng, self._site_set)
        else:
            visitor = (rng.choice(self._sites), f"{rng.getrandbits(128):032x}")
        self._active.append(visitor)
        return visitor


async def run(
    copy: Path, events: int, rounds: int, skip: int, *, visitors: int, skew: float
) -> None:
    configure_logging("warning")
    _time_store_calls()
    with tempfile.TemporaryDirectory(prefix="round-cost-") as tmp:
        chdb = Path(tmp) / "chdb"
        shutil.copytree(copy, chdb, symlinks=True, copy_function=_link_or_copy)
        store = client_mod.ClickHouseStore(ClickHouseSettings(url=f"chdb://{chdb}"))
        await migrate(store)
        engine = AudienceEngine(store, RecordingPublisher())
        await engine.start()
        await engine.refreshed()
        sites = {a.spec.site for a in await engine.repository.all()}
        tune_collector()  # as the segmenter does once started
        traffic = HistoryTraffic(HistoryShape(events=0, visitors=visitors, skew=skew), sites)
        measured: list[tuple[float, float]] = []
        print(f"CPU: {cpu_model()}; {events:,} events a round on {copy}")
        for r in range(rounds):
            # Received up to now (the events are 0.1 ms apart).
            keys, values = traffic.events(events, time.time() - events / 10_000)
            body = b"\n".join(values)
            _timing[0] = r >= skip
            changes_before = engine.stats.changes
            wall, cpu = time.perf_counter(), time.process_time()
            await store.insert_json_rows("events", body, dedup_token=f"round-cost-{time.time()}")
            await engine.on_round(keys, [engine.digest(body)], f"round-cost-{r}-{time.time()}")
            wall_ms = (time.perf_counter() - wall) * 1000
            cpu_ms = (time.process_time() - cpu) * 1000
            if r >= skip:
                measured.append((wall_ms, cpu_ms))
            print(
                f"  round {r}: {wall_ms:6.0f} ms wall, {cpu_ms:6.0f} ms CPU, {len(keys):,} "
                f"visitors, {engine.stats.changes - changes_before:,} changes"
            )
        print(
            f"  => round median {statistics.median(w for w, _ in measured):.0f} ms wall, "
            f"{statistics.median(c for _, c in measured):.0f} ms CPU "
            f"(rounds {skip} to {rounds - 1})"
        )
        for label, times in sorted(_calls.items(), key=lambda kv: -sum(c for _, c in kv[1])):
            print(
                f"  {statistics.median(w for w, _ in times):7.1f} ms wall "
                f"{statistics.median(c for _, c in times):7.1f} ms CPU  n={len(times):3d}  {label}"
            )
        await engine.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copy", type=Path, required=True, help="a kept chDB directory")
    parser.add_argument("--events", type=int, default=6000, help="events a round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip", type=int, default=2, help="first rounds left out")
    parser.add_argument("--visitors", type=int, default=1_000_000, help="of the history")
    parser.add_argument("--skew", type=float, default=1.5, help="of the history")
    args = parser.parse_args()
    asyncio.run(
        run(
            args.copy,
            args.events,
            args.rounds,
            args.skip,
            visitors=args.visitors,
            skew=args.skew,
        )
    )


if __name__ == "__main__":
    main()
