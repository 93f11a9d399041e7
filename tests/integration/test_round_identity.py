"""A round's one identity statement answers what the two lookups it replaced answered.

A round resolves its visitors to the persons they belong to now, then finds those persons'
visitors. :func:`keys_sql` does both in one statement; on random identity graphs (visitors
moved between persons over several versions, merged persons, ids that are persons and visitors
at once, several sites) its rows give every visitor the person
:meth:`IdentityGraph.persons_of_sites` gives, and for those persons (and persons asked for
directly) the same state keys as the earlier statement asked for the resolved persons.
"""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.state_read import keys_sql, persons_of, state_keys
from leadback.identity.graph import IdentityGraph
from leadback.store.client import ClickHouseStore
from leadback.store.literals import as_set, string_pairs
from tests.conftest import store_examples

_runs = itertools.count()
IDS = ["a", "b", "c", "u:1", "u:2", "u:3"]

# An identity row: (site, visitor, person); versions follow the list's order.
rows = st.lists(
    st.tuples(st.sampled_from(["s1", "s2"]), st.sampled_from(IDS), st.sampled_from(IDS)),
    max_size=12,
)
asked = st.lists(st.tuples(st.sampled_from(["s1", "s2"]), st.sampled_from(IDS)), max_size=6)


def _persons_keys_sql(db: str, persons: str) -> str:
    """The statement that found the persons' visitors before (persons only, resolved first)."""
    wanted = as_set(persons)
    return (
        f"SELECT site_id, visitor_id, argMax(person_id, version) FROM {db}.identities "
        f"WHERE (site_id, visitor_id) IN (SELECT site_id, visitor_id FROM {db}.identities "
        f"WHERE (site_id, person_id) IN {wanted} OR (site_id, visitor_id) IN {wanted}) "
        "GROUP BY site_id, visitor_id"
    )


@store_examples(60)
@given(graph=rows, visitors=asked, extra=asked)
async def test_one_statement_resolves_visitors_and_finds_the_persons_visitors(
    db: ClickHouseStore,
    graph: list[tuple[str, str, str]],
    visitors: list[tuple[str, str]],
    extra: list[tuple[str, str]],
) -> None:
    run = next(_runs)
    # Sites of their own per example: earlier examples' rows stay in the shared store.
    site = {name: f"{name}-{run}" for name in ("s1", "s2")}
    graph = [(site[s], v, p) for s, v, p in graph]
    visitors = [(site[s], v) for s, v in visitors]
    extra = [(site[s], p) for s, p in extra]
    if graph:
        body = b"\n".join(
            orjson.dumps({"site_id": s, "visitor_id": v, "person_id": p, "version": n + 1})
            for n, (s, v, p) in enumerate(graph)
        )
        await db.insert_json_rows("identities", body, dedup_token=f"round-identity-{run}")
    by_site: dict[str, set[str]] = {}
    for s, v in visitors:
        by_site.setdefault(s, set()).add(v)
    # The two lookups a round made before.
    resolved = await IdentityGraph(db).persons_of_sites(by_site)
    expected = {(s, resolved[s][v]) for s, v in visitors}
    persons = sorted(expected | set(extra))
    before = state_keys(
        persons, await db.query(_persons_keys_sql(db.database, string_pairs(persons)))
    )
    # The one statement, asked for the visitors and the extra persons.
    ids = sorted({*visitors, *extra})
    found = await db.query(keys_sql(db.database, string_pairs(ids)))
    assert persons_of(visitors, found) == expected
    assert state_keys(persons, found) == before
