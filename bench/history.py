"""Stored history for the benchmarks: months of realistic events, written inside ClickHouse.

The events table of a Leadback database is filled with ``INSERT INTO {db}.events ... SELECT ...
FROM numbers(...)`` statements, one per slice of time (a few million rows each, so memory stays
bounded and no statement spans more daily partitions than an insert may): no row passes through
Python. What the rows look like:

* sites: ``shop``, ``news``, ``saas`` (the audience bench's sites) and ``site03``..``site19``,
  with falling weights; each visitor belongs to one site;
* visitors: ``visitors`` of them (default 200,000 per 10M events), skewed: the visitor of a
  session is ``floor(visitors * r ** 3)`` for a uniform ``r``, so a few visitors are heavy and
  most are light; visitor ids are 32 hex characters (``md5("<seed>:<index>")``), so a load
  generator can draw the same returning visitors (:meth:`HistoryShape.returning_visitor`);
* sessions of six events a few tens of seconds apart, spread over ``days`` days, the newest day
  three times as dense as the oldest;
* the event type mix of the audience bench (``bench.audiences.MIX``), product ids, categories,
  prices and values in ``properties`` (``items`` for checkouts and purchases), a user id on
  identify events, URLs and referrers, UTM and click ids on a fifth of the sessions' landing
  pages, one of a few hundred user agents per visitor, a truncated IP, a language;
* unique event ids (``generateUUIDv4()``), consent granted, not bots, source ``pixel``.

Times go to ``received_at`` and, when the table has it, ``occurred_at`` (the event time the
audiences measure windows on). Nothing is optimized: like a real table, the parts are as the
inserts and background merges left them; :func:`settle_merges` waits until the merges the
inserts started are done, as they would be on a day-old table.

    python -m bench.history --dsn chdb:///tmp/history --events 10000000 [--visitors N]
        [--days 300] [--sites 20] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leadback.logs import configure_logging
from leadback.settings import ClickHouseSettings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

# The audience bench's three sites first (same shares between them), then 17 smaller ones.
HISTORY_SITES: list[tuple[str, float]] = [
    ("shop", 0.30),
    ("news", 0.125),
    ("saas", 0.075),
    *((f"site{i:02d}", 0.5 / i / sum(1 / k for k in range(3, 20))) for i in range(3, 20)),
]
MIX = [
    ("page_view", 0.50),
    ("product_view", 0.25),
    ("add_to_cart", 0.09),
    ("remove_from_cart", 0.02),
    ("checkout", 0.05),
    ("purchase", 0.03),
    ("lead", 0.02),
    ("signup", 0.015),
    ("identify", 0.015),
    ("custom", 0.01),
]
CATEGORIES = ["shoes", "bags", "coats", "hats", "socks"]
VISITORS_PER_EVENT = 200_000 / 10_000_000
SESSION = 6  # events per session
PRODUCTS = 2000  # catalogue size per site
GROWTH = 2.0  # the newest day has 1 + GROWTH times the events of the oldest
CHUNK_ROWS = 5_000_000
MAX_DAYS_PER_STATEMENT = 45  # daily partitions: an insert may touch 100 at most
_KNUTH = 2654435761
_U32 = 1 << 32
UTM = [
    ("google", "cpc", "brand", "gclid"),
    ("google", "cpc", "spring_sale", "gclid"),
    ("facebook", "paid_social", "retarget", "fbclid"),
    ("newsletter", "email", "weekly", ""),
    ("yandex", "cpc", "search", "yclid"),
    ("tiktok", "paid_social", "video", "ttclid"),
]
REFERRERS = [
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://www.facebook.com/",
    "https://t.co/",
    "https://yandex.ru/",
    "https://duckduckgo.com/",
    "",
    "",
]
LANGUAGES = ["en", "en-US", "en-GB", "de", "fr", "es", "ru", "pt-BR", "it", "nl"]


def user_agents(n: int = 240, seed: int = 7) -> list[str]:
    """``n`` distinct, plausible browser user agents (desktop and mobile, several versions)."""
    rng = random.Random(seed)
    systems = [
        "Windows NT 10.0; Win64; x64",
        "Macintosh; Intel Mac OS X 10_15_7",
        "X11; Linux x86_64",
        "Linux; Android 14; Pixel 8",
        "Linux; Android 13; SM-S911B",
        "iPhone; CPU iPhone OS 17_5 like Mac OS X",
        "iPad; CPU OS 17_4 like Mac OS X",
    ]
    out: set[str] = set()
    while len(out) < n:
        system = rng.choice(systems)
        kind = rng.random()
        if "iPhone" in system or "iPad" in system or (kind < 0.2 and "Mac" in system):
            v = f"{rng.randint(15, 18)}.{rng.randint(0, 6)}"
            mobile = " Mobile/15E148" if "iP" in system else ""
            out.add(
                f"Mozilla/5.0 ({system}) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                f"Version/{v}{mobile} Safari/605.1.15"
            )
        elif kind < 0.75:
            v = f"{rng.randint(118, 133)}.0.{rng.randint(5000, 6900)}.{rng.randint(0, 200)}"
            mobile = " Mobile" if "Android" in system else ""
            out.add(
                f"Mozilla/5.0 ({system}) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{v}{mobile} Safari/537.36"
            )
        elif kind < 0.9:
            v = f"{rng.randint(115, 134)}.0"
            out.add(f"Mozilla/5.0 ({system}; rv:{v}) Gecko/20100101 Firefox/{v}")
        else:
            v = f"{rng.randint(118, 133)}.0.{rng.randint(2000, 3000)}.{rng.randint(0, 99)}"
            out.add(
                f"Mozilla/5.0 ({system}) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{v.split('.')[0]}.0.0.0 Safari/537.36 Edg/{v}"
            )
    return sorted(out)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _array(values: list[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


@dataclass(frozen=True)
class HistoryShape:
    """What a filled history holds; also what a load generator needs to draw its visitors."""

    events: int
    visitors: int
    days: int = 300
    sites: list[tuple[str, float]] = field(default_factory=lambda: list(HISTORY_SITES))
    seed: int = 7
    skew: float = 3.0

    def _thresholds(self) -> list[tuple[int, str]]:
        total = sum(w for _, w in self.sites)
        out, acc = [], 0.0
        for name, w in self.sites:
            acc += w / total
            out.append((min(_U32, round(acc * _U32)), name))
        out[-1] = (_U32, out[-1][1])
        return out

    def visitor_id(self, index: int) -> str:
        """The visitor id of visitor ``index`` (what the fill writes: md5 of seed and index)."""
        return hashlib.md5(f"{self.seed}:{index}".encode()).hexdigest()

    def site_of(self, index: int) -> str:
        """The site visitor ``index`` belongs to (the same integer hash as the fill's SQL)."""
        h = (index * _KNUTH) % _U32
        for limit, name in self._thresholds():
            if h < limit:
                return name
        return self.sites[-1][0]

    def returning_visitor(self, rng: random.Random, sites: set[str]) -> tuple[str, str]:
        """(site, visitor id) of a history visitor of one of ``sites``, drawn with the same
        skew as the history (heavy visitors come back more often)."""
        for _ in range(100_000):
            index = math.floor(self.visitors * rng.random() ** self.skew)
            site = self.site_of(index)
            if site in sites:
                return site, self.visitor_id(index)
        raise ValueError(f"no history visitor belongs to {sorted(sites)}")

    def product(self, rng: random.Random) -> tuple[str, str, float]:
        """(product id, category, price) from the history's catalogue (popular ones first)."""
        p = math.floor(PRODUCTS * rng.random() ** 2)
        return f"p{p}", CATEGORIES[p % len(CATEGORIES)], round(5 + (p * 7919 % 29500) / 100, 2)

    def site_sql(self, index: str) -> str:
        h = f"(({index} * {_KNUTH}) % {_U32})"
        arms = [f"{h} < {limit}, {_quote(name)}" for limit, name in self._thresholds()[:-1]]
        return f"multiIf({', '.join(arms)}, {_quote(self.sites[-1][0])})"


def _cdf(x: float) -> float:
    # Share of the events before time x (0 = oldest, 1 = now), density 1 + GROWTH * x.
    return (x + GROWTH * x * x / 2) / (1 + GROWTH / 2)


@dataclass(frozen=True)
class Slice:
    """One insert statement: ``rows`` rows from row ``first``, sessions starting between
    shares ``u0`` and ``u1`` of all events (inverse of :func:`_cdf` gives their times)."""

    first: int
    rows: int
    u0: float
    u1: float


def plan(events: int, days: int, chunk_rows: int = CHUNK_ROWS) -> list[Slice]:
    """Statements in time order; each under ``chunk_rows`` rows and ``MAX_DAYS_PER_STATEMENT``."""
    sessions = math.ceil(events / SESSION)
    peak = (1 + GROWTH) / (1 + GROWTH / 2)  # densest slice / average slice
    n = max(
        1,
        math.ceil(days / MAX_DAYS_PER_STATEMENT),
        math.ceil(events * peak / chunk_rows),
    )
    out: list[Slice] = []
    for k in range(n):
        u0, u1 = _cdf(k / n), _cdf((k + 1) / n)
        s0, s1 = round(sessions * u0), round(sessions * u1)
        first = s0 * SESSION
        rows = min(s1 * SESSION, events) - first
        if rows > 0:
            out.append(Slice(first, rows, u0, u1))
    return out


def insert_sql(db: str, shape: HistoryShape, part: Slice, now_ms: int, *, occurred_at: bool) -> str:
    """``INSERT ... SELECT`` of one slice. Random numbers are hashes of (seed, row or session,
    purpose): the same seed gives the same history (bar event ids and the time it ends)."""
    seed = shape.seed
    span_ms = shape.days * 86_400_000 - SESSION * 120_000
    start_ms = now_ms - shape.days * 86_400_000
    arms, acc = [], 0.0
    for name, w in MIX[:-1]:
        acc += w
        arms.append(f"r_type < {acc!r}, {_quote(name)}")
    type_sql = f"multiIf({', '.join(arms)}, {_quote(MIX[-1][0])})"
    a = GROWTH
    x_sql = f"(sqrt(1 + 2 * {a} * (1 + {a} / 2) * u) - 1) / {a}"
    uas = user_agents(seed=seed)
    utm_rows = "[" + ", ".join(f"({', '.join(_quote(v) for v in u)})" for u in UTM) + "]"
    time_cols = "received_at, occurred_at" if occurred_at else "received_at"
    time_vals = "t, t" if occurred_at else "t"
    return f"""
INSERT INTO {db}.events (schema_version, event_id, site_id, visitor_id, type, name, sent_at,
    {time_cols}, anonymous_id, user_id, traits, url, referrer, utm, click_ids, properties,
    context, consent, bot, source, inserted_at)
-- optimize_on_insert=0 as the segmenter inserts; no deduplication by block hash (new data).
SETTINGS optimize_on_insert = 0, insert_deduplicate = 0
SELECT 1, toString(generateUUIDv4(n)), site, vid, type,
    if(type = 'custom', 'video_play', ''), NULL, {time_vals}, vid,
    if(type = 'identify', concat('user-', toString(vidx)), ''), '{{}}',
    concat('https://', site, '.example', path,
        if(tagged, concat('?utm_source=', utm.1, '&utm_medium=', utm.2, '&utm_campaign=',
            utm.3, if(utm.4 != '', concat('&', utm.4, '=', clid), '')), '')),
    if(landing, referrer, concat('https://', site, '.example/')),
    if(tagged, tuple(utm.1, utm.2, utm.3, '', ''), tuple('', '', '', '', '')),
    tuple(if(tagged AND utm.4 = 'gclid', clid, ''), if(tagged AND utm.4 = 'fbclid', clid, ''),
        if(tagged AND utm.4 = 'yclid', clid, ''), if(tagged AND utm.4 = 'ttclid', clid, ''),
        ''),
    multiIf(
        type IN ('product_view', 'add_to_cart', 'remove_from_cart'),
        concat('{{"product_id":"', pid, '","category":"', cat, '","price":', toString(price),
            ',"value":', toString(price), ',"currency":"EUR"}}'),
        type IN ('checkout', 'purchase'),
        concat('{{"value":', toString(round(price * qty, 2)), ',"currency":"EUR","items":',
            '[{{"product_id":"', pid, '","quantity":', toString(qty), ',"price":',
            toString(price), '}}]}}'),
        '{{}}'),
    tuple(ua, ip, lang),
    tuple('granted', ['all'], false, false, true),
    false, 'pixel', t + toIntervalMillisecond(200 + r_misc % 1800)
FROM (
    SELECT *,
        {type_sql} AS type,
        {shape.site_sql("vidx")} AS site,
        lower(hex(MD5(concat('{seed}:', toString(vidx))))) AS vid,
        fromUnixTimestamp64Milli(toInt64(session_ms + k * 45000 + r_misc % 30000), 'UTC') AS t,
        k = 0 AS landing,
        landing AND utm_i > 0 AS tagged,
        concat('p', toString(prod)) AS pid,
        {_array(CATEGORIES)}[1 + prod % {len(CATEGORIES)}] AS cat,
        round(5 + (prod * 7919 % 29500) / 100, 2) AS price,
        1 + r_misc % 3 AS qty,
        {utm_rows}[greatest(utm_i, 1)] AS utm,
        lower(hex(cityHash64({seed}, s, 9))) AS clid,
        {_array(REFERRERS)}[1 + cityHash64({seed}, s, 10) % {len(REFERRERS)}] AS referrer,
        {_array(uas)}[1 + cityHash64({seed}, vidx, 11) % {len(uas)}] AS ua,
        concat(toString(1 + cityHash64({seed}, vidx, 12) % 223), '.',
            toString(cityHash64({seed}, vidx, 13) % 256), '.',
            toString(cityHash64({seed}, vidx, 14) % 256), '.0') AS ip,
        {_array(LANGUAGES)}[1 + cityHash64({seed}, vidx, 15) % {len(LANGUAGES)}] AS lang,
        multiIf(type = 'page_view', multiIf(r_page < 0.03, '/contact', r_page < 0.25, '/',
                r_page < 0.45, concat('/c/', cat), r_page < 0.7,
                concat('/blog/', toString(r_misc % 400)), concat('/p/', pid)),
            type IN ('product_view', 'remove_from_cart'), concat('/p/', pid),
            type = 'add_to_cart', '/cart', type = 'checkout', '/checkout',
            type = 'purchase', '/thank-you', type = 'lead', '/contact',
            type = 'signup', '/signup', '/') AS path
    FROM (
        SELECT number AS n, intDiv(n, {SESSION}) AS s, n % {SESSION} AS k,
            toUInt64(floor({shape.visitors} * pow(cityHash64({seed}, s, 1) / 18446744073709551616.0,
                {shape.skew}))) AS vidx,
            {part.u0!r} + ({part.u1!r} - {part.u0!r})
                * (cityHash64({seed}, s, 2) / 18446744073709551616.0) AS u,
            {start_ms} + toInt64({span_ms} * ({x_sql})) AS session_ms,
            cityHash64({seed}, n, 3) / 18446744073709551616.0 AS r_type,
            cityHash64({seed}, n, 4) / 18446744073709551616.0 AS r_page,
            cityHash64({seed}, n, 5) AS r_misc,
            toUInt64(floor({PRODUCTS} * pow(cityHash64({seed}, s, intDiv(k, 3), 6)
                / 18446744073709551616.0, 2))) AS prod,
            if(cityHash64({seed}, s, 7) % 5 = 0, 1 + cityHash64({seed}, s, 8) % {len(UTM)}, 0)
                AS utm_i
        FROM numbers({part.first}, {part.rows})
    )
)
"""


@dataclass
class FillResult:
    """What :func:`fill_history` did and how long it took."""

    rows: int
    statements: int
    insert_s: float
    merge_wait_s: float
    occurred_at: bool
    shape: HistoryShape

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.insert_s if self.insert_s else 0.0


async def has_column(store: ClickHouseStore, table: str, column: str) -> bool:
    """Whether ``table`` of the store's database has ``column`` (system.columns)."""
    rows = await store.query(
        "SELECT count() FROM system.columns WHERE database = {db:String} "
        "AND table = {t:String} AND name = {c:String}",
        {"db": store.database, "t": table, "c": column},
    )
    return int(rows[0][0]) > 0


async def settle_merges(
    store: ClickHouseStore, *, quiet_s: float = 5.0, timeout_s: float = 1800.0
) -> float:
    """Wait until no merge of the events table has run for ``quiet_s`` (or ``timeout_s``
    passed); return the seconds waited. Nothing is forced: the parts stay as merged."""
    t0 = time.perf_counter()
    quiet_since: float | None = None
    while time.perf_counter() - t0 < timeout_s:
        rows = await store.query(
            "SELECT count() FROM system.merges WHERE database = {db:String} AND table = 'events'",
            {"db": store.database},
        )
        now = time.perf_counter()
        if int(rows[0][0]) == 0:
            quiet_since = quiet_since if quiet_since is not None else now
            if now - quiet_since >= quiet_s:
                break
        else:
            quiet_since = None
        await asyncio.sleep(0.5)
    return time.perf_counter() - t0


async def fill_history(
    store: ClickHouseStore,
    events: int,
    *,
    visitors: int | None = None,
    days: int = 300,
    sites: list[tuple[str, float]] | None = None,
    seed: int = 7,
    skew: float = 3.0,
    chunk_rows: int = CHUNK_ROWS,
    now_ms: int | None = None,
    settle: bool = True,
) -> FillResult:
    """Add ``events`` rows of history (ending now) to the events table of ``store``'s database
    (migrated first). ``visitors`` defaults to 200,000 per 10M events."""
    await migrate(store)
    shape = HistoryShape(
        events=events,
        visitors=visitors or max(1, round(events * VISITORS_PER_EVENT)),
        days=days,
        sites=sites or list(HISTORY_SITES),
        seed=seed,
        skew=skew,
    )
    occurred = await has_column(store, "events", "occurred_at")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    parts = plan(events, days, chunk_rows)
    t0 = time.perf_counter()
    for part in parts:
        await store.command(insert_sql(store.database, shape, part, now, occurred_at=occurred))
    insert_s = time.perf_counter() - t0
    merge_s = await settle_merges(store) if settle else 0.0
    return FillResult(events, len(parts), insert_s, merge_s, occurred, shape)


async def describe(store: ClickHouseStore) -> dict[str, Any]:
    """Rows, visitors, time range, partitions, parts and bytes of the events table."""
    db = store.database
    time_col = "occurred_at" if await has_column(store, "events", "occurred_at") else "received_at"
    (rows, uniq, lo, hi, sites, top), *_ = await store.query(
        f"SELECT count(), uniqExact(visitor_id), min({time_col}), max({time_col}), "
        f"uniqExact(site_id), max(c) FROM {db}.events AS e "
        f"CROSS JOIN (SELECT max(c) AS c FROM (SELECT count() AS c FROM {db}.events "
        "GROUP BY visitor_id)) AS m"
    )
    (parts, partitions, disk, uncompressed), *_ = await store.query(
        "SELECT count(), uniqExact(partition), sum(bytes_on_disk), "
        "sum(data_uncompressed_bytes) FROM system.parts "
        "WHERE active AND database = {db:String} AND table = 'events'",
        {"db": db},
    )
    return {
        "rows": int(rows),
        "visitors": int(uniq),
        "sites": int(sites),
        "top_visitor_events": int(top),
        "time_column": time_col,
        "min_time": str(lo),
        "max_time": str(hi),
        "active_parts": int(parts),
        "partitions": int(partitions),
        "bytes_on_disk": int(disk),
        "bytes_uncompressed": int(uncompressed),
    }


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", required=True, help="chdb:///dir or http://host:8123")
    parser.add_argument("--database", default="leadback")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--visitors", type=int, default=None, help="default 200,000 per 10M")
    parser.add_argument("--days", type=int, default=300)
    parser.add_argument("--sites", type=int, default=len(HISTORY_SITES), help="first N sites")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    parser.add_argument("--skew", type=float, default=3.0, help="visitor = floor(N * r ** skew)")
    parser.add_argument("--no-describe", action="store_true", help="skip the summary query")
    parser.add_argument("--manifest", type=Path, help="write the shape and figures here (JSON)")
    args = parser.parse_args()
    configure_logging("warning")
    store = ClickHouseStore(ClickHouseSettings(url=args.dsn, database=args.database))
    result = await fill_history(
        store,
        args.events,
        visitors=args.visitors,
        days=args.days,
        sites=HISTORY_SITES[: args.sites],
        seed=args.seed,
        skew=args.skew,
        chunk_rows=args.chunk_rows,
    )
    print(
        f"filled {result.rows:,} events ({result.shape.visitors:,} visitors, "
        f"{len(result.shape.sites)} sites, {args.days} days) in {result.insert_s:.1f} s "
        f"({result.rows_per_s:,.0f} rows/s, {result.statements} statements); merges settled "
        f"after {result.merge_wait_s:.1f} s more; times in "
        f"{'received_at and occurred_at' if result.occurred_at else 'received_at'}"
    )
    d: dict[str, Any] = {}
    if not args.no_describe:
        d = await describe(store)
        print(
            f"events: {d['rows']:,} rows, {d['visitors']:,} visitors, {d['sites']} sites, "
            f"top visitor {d['top_visitor_events']:,} events, {d['time_column']} "
            f"{d['min_time']} .. {d['max_time']}; {d['partitions']} partitions, "
            f"{d['active_parts']} active parts, {d['bytes_on_disk'] / 1e6:,.0f} MB on disk "
            f"({d['bytes_uncompressed'] / 1e6:,.0f} MB uncompressed)"
        )
    await store.close()
    if args.manifest is not None:
        shape = result.shape
        args.manifest.write_text(
            json.dumps(
                {
                    "events": shape.events,
                    "visitors": shape.visitors,
                    "days": shape.days,
                    "sites": [name for name, _ in shape.sites],
                    "seed": shape.seed,
                    "skew": shape.skew,
                    "filled_at": time.time(),
                    "insert_s": result.insert_s,
                    "rows_per_s": result.rows_per_s,
                    "merge_wait_s": result.merge_wait_s,
                    "occurred_at": result.occurred_at,
                    "table": d,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    asyncio.run(_main())
