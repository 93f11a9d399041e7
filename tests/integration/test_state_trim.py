"""The state read's trimming and due times, in Python, answer what its statement answers.

Random signal rows (several rows per key in one block, times before ``since``, after
``now``, repeated milliseconds with other event hashes), random needs (read whole, a window, the
latest few) and thresholds: every row :func:`state_sql` returns has the ``tt`` of
:func:`trim_times` and the ``due`` of :func:`due_time` over the same stored times, and it
returns exactly the rows whose latest time is after ``since``. The two visitors are apart, or
one person through the identity graph (either one's), or one merged into a person not asked
for: the rows are those of each person's visitors now (:func:`keys_sql`, :func:`state_keys`).
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.compiler import NEVER
from leadback.audiences.person_state import ensure_view
from leadback.audiences.state_read import (
    STATE_WIDTH,
    due_time,
    keys_sql,
    state_keys,
    state_sql,
    trim_times,
)
from leadback.store.client import ClickHouseStore
from leadback.store.literals import string_pairs
from tests.conftest import store_examples

NOW = 1_800_000_000_000
HOUR = 3_600_000
SIGNALS = [11, 12, 13]
_sites = itertools.count()

offsets = st.integers(-30 * 24, 2).map(lambda h: NOW + h * HOUR) | st.sampled_from(
    [NOW, NOW - HOUR, NOW - 24 * HOUR, NOW + 1]
)
stored_rows = st.lists(
    st.tuples(
        st.sampled_from(["v1", "v2"]),
        st.sampled_from(SIGNALS),
        st.sampled_from(["", "p1"]),
        st.lists(st.tuples(offsets, st.integers(1, 3)), min_size=1, max_size=5),
    ),
    min_size=1,
    max_size=10,
)
needs = st.dictionaries(
    st.sampled_from(SIGNALS),
    st.tuples(st.sampled_from([0, HOUR, 24 * HOUR, 7 * 24 * HOUR]), st.integers(0, 3)),
)
thresholds = st.lists(st.sampled_from([HOUR, 2 * HOUR, 24 * HOUR, 3 * 24 * HOUR]), max_size=3)
#: Identity rows (visitor, person, version): the visitors apart; v2 v1's (its latest row says
#: so); v1 v2's, v1's own row naming itself first; v1 merged into v9, a person not read.
IDENTITIES = {
    "apart": [],
    "v2 is v1's": [("v2", "v9", 1), ("v2", "v1", 2)],
    "v1 is v2's": [("v1", "v1", 1), ("v1", "v2", 2)],
    "v1 moved away": [("v1", "v9", 3)],
}


@store_examples(80)
@given(
    rows=stored_rows,
    need=needs,
    ks=thresholds,
    since_days=st.sampled_from([5, 20, 400]),
    graph=st.sampled_from(sorted(IDENTITIES)),
)
async def test_python_trims_and_dues_like_the_statement(
    db: ClickHouseStore,
    rows: list[tuple[str, int, str, list[tuple[int, int]]]],
    need: dict[int, tuple[int, int]],
    ks: list[int],
    since_days: int,
    graph: str,
) -> None:
    site = f"s{next(_sites)}"
    links = IDENTITIES[graph]
    if links:
        await db.insert_json_rows(
            "identities",
            b"\n".join(
                orjson.dumps({"site_id": site, "visitor_id": v, "person_id": p, "version": n})
                for v, p, n in links
            ),
            dedup_token=f"{site}-identities",
        )
    person_of = {v: p for v, p, _ in sorted(links, key=lambda link: link[2])}
    since = NOW - since_days * 24 * HOUR
    body = b"\n".join(
        orjson.dumps(
            {
                "site_id": site,
                "visitor_id": v,
                "signal": sig,
                "product": prod,
                "times": [list(p) for p in pairs],
                "last_t": max(t for t, _ in pairs),
            }
        )
        for v, sig, prod, pairs in rows
    )
    # Through the feed: merged into `person_state`.
    await ensure_view(db)
    await db.insert_json_rows("signal_rows", body, dedup_token=f"{site}-trim")
    ids = sorted(need)
    params: dict[str, Any] = {
        "signals": SIGNALS,
        "need_ids": ids,
        "need_window": [need[i][0] for i in ids],
        "need_latest": [need[i][1] for i in ids],
        "th_sites": [site],
        "th_values": [sorted(ks)],
        "now": NOW,
        "since": since,
    }
    persons = [(site, "v1"), (site, "v2")]
    keys = state_keys(persons, await db.query(keys_sql(db.database, string_pairs(persons))))
    # As a round reads it: columns of one JSON text.
    columns = await db.query_columns(state_sql(db.database, keys), params, width=STATE_WIDTH)
    got = zip(*columns, strict=True)
    found = {
        (str(p), int(s), str(pr)): (list(tt), int(last), int(due))
        for _, p, s, pr, tt, last, due in got
    }
    expected: dict[tuple[str, int, str], tuple[list[int], int, int]] = {}
    rows = [(person_of.get(v, v), sig, prod, ps) for v, sig, prod, ps in rows]
    for key in {(p, sig, prod) for p, sig, prod, _ in rows if p in ("v1", "v2")}:
        pairs = {p for v, sig, prod, ps in rows if (v, sig, prod) == key for p in ps}
        times = [t for t, _ in pairs]  # distinct (time, event hash) pairs: a repeated ms counts
        last = max(times)
        if last <= since:
            continue
        tt = trim_times(times, need.get(key[1]), now=NOW, since=since)
        expected[key] = (tt, last, due_time(times, last, sorted(ks), now=NOW))
    assert found == expected


def test_due_edges() -> None:
    assert due_time([NOW - HOUR], NOW - HOUR, [], now=NOW) == NEVER
    assert due_time([NOW - 5 * HOUR], NOW - 5 * HOUR, [HOUR], now=NOW) == NEVER
    assert due_time([NOW - HOUR], NOW - HOUR, [HOUR], now=NOW) == NEVER  # due exactly now: past
    assert due_time([NOW - HOUR + 1], NOW - HOUR + 1, [HOUR, 2 * HOUR], now=NOW) == NOW + 1
    # The latest time counts even when the kept ones are older.
    assert due_time([NOW - 9 * HOUR], NOW - 30 * 60_000, [HOUR], now=NOW) == NOW + 30 * 60_000


def test_trim_keeps_the_window_or_the_latest_few() -> None:
    times = [NOW - 3 * HOUR, NOW - 2 * HOUR, NOW - 1, NOW + 5]
    assert trim_times(times, None, now=NOW, since=0) == times[:3]
    assert trim_times(times, (HOUR, 0), now=NOW, since=0) == [NOW - 1]
    assert trim_times(times, (HOUR, 2), now=NOW, since=0) == [NOW - 2 * HOUR, NOW - 1]
    assert trim_times(times, (0, 9), now=NOW, since=0) == times[:3]
    assert trim_times(times, (0, 0), now=NOW, since=0) == []
