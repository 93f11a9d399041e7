"""The key-value tables a round reads hold exactly what they are fed.

``person_state``, per visitor: random blocks of signal rows go through the feed (``signal_rows``,
whose view merges them into the stored values) in several inserts, some of them inserted twice
(a replayed block), and some go into ``person_signals`` the way a backfill writes them, then the
backfill's merge: every visitor's key-value row then holds, per (signal, product), the distinct
(time, event hash) pairs and the latest time of every row fed or merged so far, and no key is
left without rows.

``person_memberships`` and ``memberships``: random membership writes in several inserts, some
inserted twice; the round's read by key answers what ``memberships FINAL`` answers.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.person_state import OLD_VIEWS, VIEW, copy_sql, ensure_view
from leadback.audiences.query import memberships_sql, stored_entries
from leadback.store.client import ClickHouseStore
from leadback.store.literals import string_pairs
from tests.conftest import store_examples

_sites = itertools.count()
T0 = 1_790_000_000_000  # ms: rows older than the events TTL would leave `person_signals`
_tokens = itertools.count()

Row = tuple[str, int, str, list[tuple[int, int]]]

rows = st.tuples(
    st.sampled_from(["v1", "v2", "v3", "v4"]),
    st.sampled_from([11, 12, 13]),
    st.sampled_from(["", "p1", "p2"]),
    st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3)), max_size=3),
)
# A block: its rows, whether it is inserted twice, whether a backfill writes it (no fan-out).
blocks = st.tuples(st.lists(rows, min_size=1, max_size=6), st.booleans(), st.booleans())


def _body(site: str, block: list[Row]) -> bytes:
    return b"\n".join(
        orjson.dumps(
            {
                "site_id": site,
                "visitor_id": v,
                "signal": sig,
                "product": prod,
                "times": [[T0 + t, h] for t, h in pairs],
                # A row of no kept times still carries its latest time (idle signals).
                "last_t": T0 + max((t for t, _ in pairs), default=0) + sig,
            }
        )
        for v, sig, prod, pairs in block
    )


async def _state(store: ClickHouseStore, site: str) -> dict[tuple[Any, ...], Any]:
    found = await store.query(
        f"SELECT visitor_id, e.1, e.2, arraySort(e.3), e.4, k "
        f"FROM {store.database}.person_state ARRAY JOIN v AS e WHERE site_id = {{s:String}}",
        {"s": site},
    )
    for r in found:
        assert r[5] == f"{site}\0{r[0]}"  # the key a round looks the visitor up by
    return {tuple(r[:3]): (list(r[3]), r[4]) for r in found}


def _expected(rows: list[Row]) -> dict[tuple[Any, ...], Any]:
    """What ``person_state`` holds after ``rows`` (see :func:`_body`): per (visitor, signal,
    product) the distinct (time, hash) pairs, sorted, and the latest time."""
    times: dict[tuple[Any, ...], set[tuple[int, int]]] = {}
    last: dict[tuple[Any, ...], int] = {}
    for v, sig, prod, pairs in rows:
        key = (v, sig, prod)
        times.setdefault(key, set()).update((T0 + t, h) for t, h in pairs)
        latest = T0 + max((t for t, _ in pairs), default=0) + sig
        last[key] = max(last.get(key, latest), latest)
    return {key: (sorted(times[key]), last[key]) for key in times}


@store_examples(40)
@given(history=st.lists(blocks, min_size=1, max_size=5))
async def test_the_key_value_rows_hold_what_was_fed_and_merged(
    db: ClickHouseStore, history: list[tuple[list[Row], bool, bool]]
) -> None:
    await ensure_view(db)  # made with the feed
    site = f"s{next(_sites)}"
    fed: list[Row] = []
    staged: list[Row] = []  # in `person_signals`, merged by the next copy
    merged = 0
    for block, twice, by_backfill in history:
        body = _body(site, block)
        for _ in range(2 if twice else 1):
            token = f"ps-{next(_tokens)}"  # a replay under another token is not deduplicated
            if by_backfill:
                await db.insert_json_rows("person_signals", body, dedup_token=token)
            else:
                await db.insert_json_rows("signal_rows", body, dedup_token=token)
        (staged if by_backfill else fed).extend(block)
        if by_backfill and twice:  # the backfill's merge (twice: changes nothing), then the feed
            for _ in range(2):
                await db.command(copy_sql(db.database, f"site_id = '{site}'"))
            merged = len(staged)
    if merged < len(staged):
        await db.command(copy_sql(db.database, f"site_id = '{site}'"))
        merged = len(staged)
    assert await _state(db, site) == _expected(fed + staged[:merged])


# A membership write: (person, audience, version); its content follows from the version (one
# version, one content), as the engine writes it.
writes = st.lists(
    st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["a", "b"]), st.integers(1, 5)),
    min_size=1,
    max_size=6,
)


def _membership(site: str, person: str, audience: str, version: int) -> bytes:
    return orjson.dumps(
        {
            "site_id": site,
            "audience_id": audience,
            "person_id": person,
            "state": "in" if version % 2 else "out",
            "version": version,
            "products": [f"x{version}"] if audience == "b" else [],
            "entered_at": 1000 * version,
            "changed_at": 1000 * version + 1,
            "audience_version": 1,
        }
    )


@store_examples(40)
@given(history=st.lists(st.tuples(writes, st.booleans()), min_size=1, max_size=5))
async def test_the_key_value_memberships_are_the_latest_versions(
    db: ClickHouseStore, history: list[tuple[list[tuple[str, str, int]], bool]]
) -> None:
    site = f"m{next(_sites)}"
    for block, twice in history:
        body = b"\n".join(_membership(site, *w) for w in block)
        for _ in range(2 if twice else 1):
            await db.insert_json_rows("memberships", body, dedup_token=f"pm-{next(_tokens)}")
    persons = string_pairs([(site, p) for p in ("p1", "p2", "p3", "nobody")])
    found = list(
        stored_entries(
            await db.query(memberships_sql(db.database, persons)), [(site, "a"), (site, "b")]
        )
    )
    final = await db.query(
        "SELECT site_id, audience_id, person_id, state, version, entered_at, products "
        f"FROM {db.database}.memberships FINAL WHERE site_id = {{s:String}}",
        {"s": site},
    )
    assert sorted(found) == sorted((*r[:6], tuple(r[6])) for r in final)


async def _tables(db: ClickHouseStore, prefix: str) -> set[str]:
    """Names of the database's tables and views starting with ``prefix``."""
    rows = await db.query(
        "SELECT name FROM system.tables "
        "WHERE database = {d:String} AND startsWith(name, {p:String})",
        {"d": db.database, "p": prefix},
    )
    return {str(r[0]) for r in rows}


async def test_a_start_replaces_the_merging_view_of_an_earlier_definition(
    db: ClickHouseStore,
) -> None:
    # An earlier release's view, still attached: merging every block once more.
    old = OLD_VIEWS[0]
    await db.command(f"DROP VIEW IF EXISTS {db.database}.{VIEW}")
    await db.command(
        f"CREATE MATERIALIZED VIEW {db.database}.{old} TO {db.database}.person_state "
        f"AS SELECT '' AS k, site_id, visitor_id, "
        "CAST([], 'Array(Tuple(UInt64, String, Array(Tuple(Int64, UInt64)), Int64))') AS v "
        f"FROM {db.database}.signal_rows"
    )
    await ensure_view(db)
    assert await _tables(db, "signal_rows_to_person_state") == {VIEW}
    site = f"s{next(_sites)}"
    await db.insert_json_rows(
        "signal_rows", _body(site, [("v1", 11, "", [(5, 1)])]), dedup_token=f"t{next(_tokens)}"
    )
    keys = await db.query(
        f"SELECT k FROM {db.database}.person_state WHERE site_id = {{s:String}}", {"s": site}
    )
    assert [str(k) for (k,) in keys] == [f"{site}\0v1"]


async def test_memberships_merge_through_one_view(db: ClickHouseStore) -> None:
    # 0013 dropped 0012's view.
    assert await _tables(db, "memberships_to_person_memberships") == {
        "memberships_to_person_memberships_v2"
    }
