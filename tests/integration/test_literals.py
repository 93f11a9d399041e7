"""Literals written into statements read back as the very strings they were made of."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadback.store.client import ClickHouseStore
from leadback.store.literals import as_set, string, string_pairs, strings

pytestmark = pytest.mark.integration

# Any text a visitor id can be (ids come decoded from UTF-8: no lone surrogates) but NUL,
# which a query's text cannot carry; quotes and backslashes above all.
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from("'\\\"`\n\t\r?{}"),
        st.characters(exclude_characters="\0", exclude_categories=("Cs",)),
    ),
    max_size=12,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(texts, max_size=5), pairs=st.lists(st.tuples(texts, texts), max_size=4))
async def test_a_literal_is_read_back_as_its_values(
    store: ClickHouseStore, values: list[str], pairs: list[tuple[str, str]]
) -> None:
    rows = await store.query(
        f"SELECT CAST({strings(values)} AS Array(String)), {string_pairs(pairs)}"
    )
    assert list(rows[0][0]) == values
    assert [tuple(p) for p in rows[0][1]] == pairs
    for value in values:  # and as the set of an IN
        found = await store.query(f"SELECT {string(value)} IN {as_set(strings(values))}")
        assert found[0][0] == 1
    if pairs:
        a, b = pairs[0]
        found = await store.query(
            f"SELECT ({string(a)}, {string(b)}) IN {as_set(string_pairs(pairs))}, "
            f"({string(a + 'x')}, {string(b)}) IN {as_set(string_pairs(pairs))}"
        )
        assert tuple(found[0]) == (1, int((a + "x", b) in pairs))


async def test_a_literal_that_looks_like_a_parameter_stays_text(store: ClickHouseStore) -> None:
    ids = ["{now:Int64}", "%(now)s", "%s"]
    rows = await store.query(
        f"SELECT {{now:Int64}}, CAST({strings(ids)} AS Array(String))", {"now": 5}
    )
    assert rows[0][0] == 5
    assert list(rows[0][1]) == ids


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(texts, min_size=1, max_size=5),
    numbers=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=5),
    big=st.integers(0, 2**64 - 1),
)
async def test_columns_read_as_json_are_the_values_stored(
    store: ClickHouseStore, values: list[str], numbers: list[int], big: int
) -> None:
    """`query_columns` (one JSON text) gives the same Python values `query` does: any text,
    every 64-bit integer, arrays."""
    sql = (
        f"SELECT arrayJoin({strings(values)}) AS s, toUInt64({big}) AS u, "
        f"CAST({numbers} AS Array(Int64)) AS a, length(s) AS n"
    )
    columns = await store.query_columns(sql, width=4)
    rows = await store.query(sql)
    assert columns[0] == values
    assert list(zip(*columns, strict=True)) == [tuple(r) for r in rows]
    assert columns[1] == [big] * len(values) and columns[2] == [numbers] * len(values)


async def test_no_rows_read_as_json_are_empty_columns(store: ClickHouseStore) -> None:
    columns = await store.query_columns("SELECT 1, 'a', [2] WHERE 0", width=3)
    assert columns == [[], [], []]
