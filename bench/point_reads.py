"""Point reads of persons' signal rows: the ``person_signals`` MergeTree against a key-value table.

A round reads the signal rows of the persons it touched. ``person_signals`` is an
AggregatingMergeTree in 256-row granules: a person's rows cost at least a granule per part,
and the read grows with the table. This measures that read against the same rows held per
person in an ``EmbeddedRocksDB`` table (a key-value engine ClickHouse and chDB ship), and what
keeping such a table would cost a round: looking the round's persons up by a ``direct`` join
and writing their new values; and a feed that keeps such a table up to date as events are
inserted (a materialized view that looks the block's keys up by a ``direct`` join and writes
the merged values, idempotent for a replayed block), against the same insert with no view.
The spike that led to ``person_state`` and ``person_memberships`` (migrations 0011 and 0012),
the tables a round now reads by key; it measures the engines on their own, not the product's
statements.

    python -m bench.point_reads [--visitors 400000,2000000] [--persons 100,2500]
    python -m bench.point_reads --copy bench/.data/ready-history-50000000-skew1.5-<hash>/chdb

``--copy``: instead of synthetic rows, a copy of a benchmark database kept by ``bench.audiences
--reuse-startup`` (its ``leadback.person_signals``, copied to a temporary directory first).

One chDB directory per size; medians of 11 statements (7 for the writes). Prints ms per
statement; writes ``bench/results/point_reads-<time>.json``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from chdb import session

from bench.common import cpu_model

SITES = 20
SIGNALS_PER_VISITOR = 15
PARTS = 40


def _median_ms(run: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _fill(q: Callable[..., Any], visitors: int) -> None:
    q("CREATE DATABASE t")
    q(
        "CREATE TABLE t.ps (site_id LowCardinality(String), visitor_id String, signal UInt64, "
        "product String, times SimpleAggregateFunction(groupUniqArrayArray, "
        "Array(Tuple(Int64, UInt64))), last_t SimpleAggregateFunction(max, Int64)) "
        "ENGINE = AggregatingMergeTree ORDER BY (site_id, visitor_id, signal, product) "
        "SETTINGS index_granularity = 256"
    )
    rows = visitors * SIGNALS_PER_VISITOR // PARTS
    for part in range(PARTS):  # many inserts, as rounds make them
        q(
            f"INSERT INTO t.ps SELECT concat('site', toString(v % {SITES})), "
            "concat('v', toString(v)), cityHash64(v, j) % 70, '', "
            "[(toInt64(1700000000000 + v * 7 + j), cityHash64(v, j, 1))], "
            "toInt64(1700000000000 + v * 7 + j) "
            f"FROM (SELECT (number * {PARTS} + {part}) % {visitors} AS v, "
            f"number % {SIGNALS_PER_VISITOR} AS j FROM numbers({rows}))"
        )
    q(
        "CREATE TABLE t.rk (k String, sig Array(Tuple(UInt64, String, "
        "Array(Tuple(Int64, UInt64)), Int64))) ENGINE = EmbeddedRocksDB PRIMARY KEY k"
    )
    q(
        "INSERT INTO t.rk SELECT concat(site_id, ':', visitor_id), "
        "groupArray((signal, product, times, last_t)) FROM (SELECT site_id, visitor_id, signal, "
        "product, groupUniqArrayArray(times) AS times, max(last_t) AS last_t FROM t.ps "
        "GROUP BY ALL) GROUP BY site_id, visitor_id"
    )


def measure(visitors: int, persons: list[int], workdir: Path) -> dict[str, Any]:
    """Fill one database with ``visitors`` and time the reads and writes of each size."""
    directory = workdir / f"v{visitors}"
    shutil.rmtree(directory, ignore_errors=True)
    s = session.Session(str(directory))
    try:

        def q(sql: str, fmt: str = "CSV") -> Any:
            return s.query(sql, fmt)

        _fill(q, visitors)
        stored = int(str(q("SELECT count() FROM t.ps")).strip())
        rnd = random.Random(visitors)
        out: dict[str, Any] = {"visitors": visitors, "signal_rows": stored, "points": []}
        for n in persons:
            chosen = [rnd.randrange(visitors) for _ in range(n)]
            pairs = ",".join(f"('site{v % SITES}','v{v}')" for v in chosen)
            keys = ",".join(f"'site{v % SITES}:v{v}'" for v in chosen)
            merge_tree = _median_ms(
                lambda pairs=pairs: q(
                    "SELECT site_id, visitor_id, signal, product, groupUniqArrayArray(times), "
                    f"max(last_t) FROM t.ps WHERE (site_id, visitor_id) IN ({pairs}) "
                    "GROUP BY site_id, visitor_id, signal, product FORMAT Null"
                ),
                11,
            )
            rocks = _median_ms(
                lambda keys=keys: q(f"SELECT k, sig FROM t.rk WHERE k IN ({keys}) FORMAT Null"), 11
            )
            listed = f"(SELECT arrayJoin([{keys}]) AS k)"
            lookup = _median_ms(
                lambda listed=listed: q(
                    f"SELECT n.k, length(r.sig) FROM {listed} AS n LEFT JOIN t.rk AS r "
                    "ON n.k = r.k SETTINGS join_algorithm = 'direct' FORMAT Null"
                ),
                11,
            )
            write = _median_ms(
                lambda listed=listed: q(
                    f"INSERT INTO t.rk SELECT n.k, r.sig FROM {listed} AS n LEFT JOIN t.rk AS r "
                    "ON n.k = r.k SETTINGS join_algorithm = 'direct'"
                ),
                7,
            )
            point = {
                "persons": n,
                "merge_tree_read_ms": merge_tree,
                "rocksdb_read_ms": rocks,
                "rocksdb_direct_join_lookup_ms": lookup,
                "rocksdb_rewrite_ms": write,
            }
            out["points"].append(point)
            print(
                f"  {visitors:>9,} visitors ({stored:,} signal rows), {n:>5,} persons: "
                f"MergeTree read {merge_tree:7.1f} ms | RocksDB read {rocks:6.1f} ms, "
                f"direct-join lookup {lookup:6.1f} ms, values written back {write:6.1f} ms",
                flush=True,
            )
        out["feed"] = _feed(q, visitors)
        return out
    finally:
        s.close()
        shutil.rmtree(directory, ignore_errors=True)


def _feed(q: Callable[..., Any], visitors: int) -> dict[str, float]:
    """Inserts of 5,000 events over 2,500 of the stored keys, with a read-merge-write view into
    the key-value table and with none (median of 9 each)."""
    q("CREATE TABLE t.ev (k String, t Int64) ENGINE = MergeTree ORDER BY k")
    q("CREATE TABLE t.kt (k String, times Array(Int64)) ENGINE = EmbeddedRocksDB PRIMARY KEY k")
    q(f"INSERT INTO t.kt SELECT concat('v', toString(number)), [number] FROM numbers({visitors})")
    q(
        "CREATE MATERIALIZED VIEW t.feed TO t.kt AS SELECT n.k AS k, "
        "arraySort(arrayDistinct(arrayConcat(r.times, n.times))) AS times "
        "FROM (SELECT k, groupArray(t) AS times FROM t.ev GROUP BY k) AS n "
        "LEFT JOIN t.kt AS r ON n.k = r.k SETTINGS join_algorithm = 'direct'"
    )
    step = max(1, visitors // 2500)
    seeds = iter(range(1_000))

    def insert() -> None:
        seed = next(seeds)
        q(
            "INSERT INTO t.ev SELECT concat('v', toString(cityHash64(number, "
            f"{seed}) % 2500 * {step})), number FROM numbers(5000)"
        )

    with_view = _median_ms(insert, 9)
    q("DROP VIEW t.feed")
    without = _median_ms(insert, 9)
    print(
        f"  {visitors:>9,} keys: insert of 5,000 events with the read-merge-write view "
        f"{with_view:.1f} ms, with no view {without:.1f} ms",
        flush=True,
    )
    return {"insert_with_view_ms": with_view, "insert_without_view_ms": without}


def measure_copy(source: Path, persons: list[int], workdir: Path) -> dict[str, Any]:
    """The reads on a copy of a kept benchmark database: its ``person_signals`` against a
    key-value copy of the same rows built here."""
    directory = workdir / "copy"
    shutil.copytree(source, directory, symlinks=True)  # data/ links into store/
    s = session.Session(str(directory))
    try:

        def q(sql: str) -> str:
            return str(s.query(sql, "CSV")).strip()

        stored = int(q("SELECT count() FROM leadback.person_signals"))
        t = time.perf_counter()
        q(
            "CREATE TABLE leadback.kv (k String, sig Array(Tuple(UInt64, String, "
            "Array(Tuple(Int64, UInt64)), Int64))) ENGINE = EmbeddedRocksDB PRIMARY KEY k"
        )
        q(
            "INSERT INTO leadback.kv SELECT concat(site_id, ':', visitor_id), "
            "groupArray((signal, product, times, last_t)) FROM (SELECT site_id, visitor_id, "
            "signal, product, groupUniqArrayArray(times) AS times, max(last_t) AS last_t "
            "FROM leadback.person_signals GROUP BY ALL) GROUP BY site_id, visitor_id "
            "SETTINGS max_bytes_before_external_group_by = 2000000000"
        )
        built = time.perf_counter() - t
        out: dict[str, Any] = {"copy": str(source), "signal_rows": stored, "kv_build_s": built}
        out["points"] = _compare_reads(
            q,
            f"copy ({stored:,} signal rows; key-value copy built in {built:.0f} s)",
            _people(q, "person_signals", "visitor_id"),
            persons,
            lambda pairs: (
                "SELECT site_id, visitor_id, signal, product, "
                "groupUniqArrayArray(times), max(last_t) FROM leadback.person_signals "
                f"WHERE (site_id, visitor_id) IN ({pairs}) "
                "GROUP BY site_id, visitor_id, signal, product FORMAT Null"
            ),
            lambda keys: f"SELECT k, sig FROM leadback.kv WHERE k IN ({keys}) FORMAT Null",
        )
        out["memberships"] = _memberships_copy(q, persons)
        return out
    finally:
        s.close()
        shutil.rmtree(directory, ignore_errors=True)


def _memberships_copy(q: Callable[[str], str], persons: list[int]) -> list[dict[str, Any]]:
    """The round's other per-person read: the persons' memberships (``FINAL``, as the
    product reads them) against the same rows per person in a key-value table."""
    stored = int(q("SELECT count() FROM leadback.memberships"))
    q(
        "CREATE TABLE leadback.kvm (k String, m Array(Tuple(String, String, UInt64, "
        "Array(String), Int64, Int64, UInt32))) ENGINE = EmbeddedRocksDB PRIMARY KEY k"
    )
    q(
        "INSERT INTO leadback.kvm SELECT concat(site_id, ':', person_id), groupArray((audience_id, "
        "state, version, products, entered_at, changed_at, audience_version)) "
        "FROM leadback.memberships FINAL GROUP BY site_id, person_id"
    )
    return _compare_reads(
        q,
        f"copy's memberships ({stored:,} rows), FINAL",
        _people(q, "memberships", "person_id"),
        persons,
        lambda pairs: (
            "SELECT site_id, audience_id, person_id, state, version FROM "
            f"leadback.memberships FINAL WHERE (site_id, person_id) IN ({pairs}) FORMAT Null"
        ),
        lambda keys: f"SELECT k, m FROM leadback.kvm WHERE k IN ({keys}) FORMAT Null",
    )


def _people(q: Callable[[str], str], table: str, person: str) -> list[tuple[str, ...]]:
    """Up to 20,000 (site, person) pairs of ``table``, in a hashed order."""
    return [
        tuple(x.strip('"') for x in line.split(","))
        for line in q(
            f"SELECT site_id, {person} FROM leadback.{table} GROUP BY ALL "
            f"ORDER BY cityHash64({person}) LIMIT 20000"
        ).split()
    ]


def _compare_reads(
    q: Callable[[str], str],
    label: str,
    people: list[tuple[str, ...]],
    persons: list[int],
    merge_tree_sql: Callable[[str], str],
    kv_sql: Callable[[str], str],
) -> list[dict[str, Any]]:
    """For each size, the MergeTree read of random persons (by ``(site, person)`` pairs)
    against the key-value read of the same persons (by ``site:person`` keys), medians of 9."""
    rnd = random.Random(len(people))
    points = []
    for n in persons:
        chosen = rnd.sample(people, min(n, len(people)))
        pairs = ",".join(f"('{a}','{b}')" for a, b in chosen)
        keys = ",".join(f"'{a}:{b}'" for a, b in chosen)
        mt_read, kv_read = merge_tree_sql(pairs), kv_sql(keys)
        merge_tree = _median_ms(lambda sql=mt_read: q(sql), 9)
        rocks = _median_ms(lambda sql=kv_read: q(sql), 9)
        points.append({"persons": n, "merge_tree_read_ms": merge_tree, "rocksdb_read_ms": rocks})
        print(
            f"  {label}, {n:>5,} persons: MergeTree read {merge_tree:7.1f} ms | "
            f"RocksDB read {rocks:6.1f} ms",
            flush=True,
        )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", default="400000,2000000")
    parser.add_argument("--persons", default="100,2500")
    parser.add_argument("--copy", type=Path, help="a kept benchmark database's chdb directory")
    args = parser.parse_args()
    persons = [int(x) for x in args.persons.split(",")]
    print(f"point reads of persons' signal rows; CPU {cpu_model()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="leadback-points-") as tmp:
        if args.copy is not None:
            results = [measure_copy(args.copy, persons, Path(tmp))]
        else:
            results = [measure(int(v), persons, Path(tmp)) for v in args.visitors.split(",")]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = Path(__file__).parent / "results" / f"point_reads-{stamp}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(orjson.dumps({"cpu_model": cpu_model(), "results": results}, option=2))
    print(f"  raw results {path}")


if __name__ == "__main__":
    main()
