"""The evaluation as one SQL statement for one site: who qualifies now, and the stored
memberships. The engine runs :mod:`~.program` (same answers, planning cost independent of the
audiences); this statement is what ``explain`` shows and what the tests check both against.

See :mod:`leadback.audiences.compiler` for the rules' expressions. The statement reads ``st``:
per person (visitors merged through ``identities``), signal and product, the times of the
matching events and the latest one. It is read from ``person_state`` (``source="signals"``,
what ``explain`` shows: a visitor's state is one value whatever their history) or computed from
``events`` with the very expression the feed uses (``source="events"``: the tests that prove
both give the same members). Then:

* person-level audiences: one ``GROUP BY person`` whose columns are the signals and whose
  result is an array of the compiled rules, turned into (audience, person) rows by ``ARRAY JOIN``;
* product-level audiences: one ``GROUP BY person, product`` each; a member carries the products
  that qualify;
* a pseudo-audience ``''`` row per person carries the next moment a time condition could flip
  (``due``), for the timer pass.

Parameters: ``site`` (String), ``now`` (Int64 ms), and for an incremental pass ``vids`` (the
visitors whose state to read) and ``persons`` (the persons whose memberships to compare). The
comparison itself is :func:`leadback.audiences.diff.transitions`: done in ClickHouse it cost
more to plan than to run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from leadback.audiences.compiler import NEVER, NOW, CompiledRule, Need, compile_rule
from leadback.audiences.predicates import literal
from leadback.audiences.rules import AudienceSpec
from leadback.audiences.signals import (
    ELIGIBLE,
    ROW_COLUMNS,
    Signal,
    any_event,
    by_id,
    entries_select,
)

Source = Literal["signals", "events"]


@dataclass(frozen=True)
class VersionedAudience:
    """An audience definition with the version the store gave it."""

    spec: AudienceSpec
    version: int


@dataclass(frozen=True)
class EvaluationQuery:
    """``members``: (audience_id, person, products, due) of every qualifying person, plus a
    row per person with audience ``''`` carrying ``due``; ``previous``: their stored
    memberships (audience_id, person_id, state, version, entered_at, products)."""

    members: str
    previous: str
    rules: tuple[CompiledRule, ...]
    thresholds: frozenset[int]
    signals: frozenset[Signal]


def _array(values: Sequence[str | int]) -> str:
    return "[" + ", ".join(literal(v) if isinstance(v, str) else str(v) for v in values) + "]"


def _columns(signals: Iterable[Signal], product: str | None = None) -> str:
    """One column per signal in a group of ``st`` rows: its times, or its latest time (of the
    rows of ``product`` only, when given)."""
    only = f" AND product = {product}" if product is not None else ""
    cols = [
        f"anyIf(tt, signal = {s.id}{only}) AS {s.column}"
        if s.times
        else f"maxIf(last_t, signal = {s.id}{only}) AS {s.column}"
        for s in by_id(signals)
    ]
    return ", ".join(cols)


def _ids(signals: Iterable[Signal]) -> str:
    return "(" + ", ".join(str(s.id) for s in by_id(signals)) + ")"


def _kept(needs: dict[Signal, Need]) -> str:
    """Per ``st`` row, the times the rules read (``tt``): of ``s`` (the times up to now,
    sorted), the suffix a signal's :class:`~leadback.audiences.compiler.Need` says; all of them
    for a signal some use reads whole."""
    branches = []
    for signal in by_id(needs):
        need = needs[signal]
        if need.everything:
            continue
        window = f"arrayCount(x -> x > {NOW} - {need.window}, s)" if need.window else "0"
        n = f"greatest({need.latest}, {window})" if need.latest else window
        branches.append(
            f"signal = {signal.id}, arraySlice(s, greatest(toInt64(length(s)) - {n} + 1, 1))"
        )
    if not branches:
        return "s"
    return f"multiIf({', '.join(branches)}, s)"


def _state(
    db: str,
    signals: frozenset[Signal],
    needs: dict[Signal, Need],
    *,
    incremental: bool,
    source: Source,
) -> str:
    """The ``st`` CTE: (person, signal, product, ts, last_t, tt) for the site's candidates:
    ``ts`` every time (for the due time), ``tt`` those up to now the rules read (sorted)."""
    inner = _merged(db, signals, incremental=incremental, source=source)
    return f"""st AS (
    SELECT person, signal, product, ts, last_t,
        arraySort(arrayFilter(x -> x <= {NOW}, ts)) AS s, {_kept(needs)} AS tt
    FROM ({inner})
)"""


def _merged(db: str, signals: frozenset[Signal], *, incremental: bool, source: Source) -> str:
    """(person, signal, product, ts, last_t) for the site's candidates."""
    ifilter = " AND visitor_id IN {vids:Array(String)}" if incremental else ""
    identities = f"""(
        SELECT visitor_id, argMax(person_id, version) AS person_id FROM {db}.identities
        WHERE site_id = {{site:String}}{ifilter} GROUP BY visitor_id
    ) AS idm"""
    if source == "signals":
        sfilter = " AND s.visitor_id IN {vids:Array(String)}" if incremental else ""
        return f"""
    SELECT if(idm.person_id != '', idm.person_id, s.visitor_id) AS person, s.signal AS signal,
        s.product AS product, arrayMap(x -> x.1, arrayDistinct(groupArrayArray(s.times))) AS ts,
        max(s.last_t) AS last_t
    FROM (
        SELECT site_id, visitor_id, e.1 AS signal, e.2 AS product, e.3 AS times, e.4 AS last_t
        FROM {db}.person_state ARRAY JOIN v AS e
    ) AS s
    LEFT ANY JOIN {identities} ON s.visitor_id = idm.visitor_id
    WHERE s.site_id = {{site:String}}{sfilter} AND s.signal IN {_ids(signals)}
    GROUP BY person, signal, product"""
    source_rows = f"{db}.events WHERE site_id = {{site:String}}{ifilter} AND {ELIGIBLE}"
    return f"""
    SELECT if(idm.person_id != '', idm.person_id, e.visitor_id) AS person, e.signal AS signal,
        e.product AS product, arrayMap(x -> x.1, groupUniqArrayIf((e.t, e.h), e.keep = 1)) AS ts,
        max(e.t) AS last_t
    FROM (
        SELECT visitor_id, t, h, entry.1 AS signal, entry.2 AS product, entry.3 AS keep
        FROM ({entries_select(signals, ROW_COLUMNS, source_rows)}) ARRAY JOIN entries AS entry
    ) AS e
    LEFT ANY JOIN {identities} ON e.visitor_id = idm.visitor_id
    GROUP BY person, signal, product"""


def build_evaluation(
    db: str,
    evaluate: Sequence[VersionedAudience],
    site_audiences: dict[str, AudienceSpec],
    *,
    incremental: bool,
    source: Source = "signals",
    materialize: bool = False,
) -> EvaluationQuery:
    """The statements that evaluate ``evaluate`` (audiences of one site). ``materialize``: read
    ``st`` once for both levels (a materialized CTE, ClickHouse 25.10 and later; without it
    each level reads it again)."""
    rules = [compile_rule(a.spec, site_audiences) for a in evaluate]
    thresholds = frozenset().union(*(r.thresholds for r in rules)) if rules else frozenset()
    signals: frozenset[Signal] = frozenset().union(*(r.signals for r in rules))
    person_level = [(a, r) for a, r in zip(evaluate, rules, strict=True) if a.spec.products is None]
    product_level = [(a, r) for a, r in zip(evaluate, rules, strict=True) if a.spec.products]
    # One pass over ``st`` per level: the persons (with the due time), and the products.
    fresh: list[str] = []
    if person_level or thresholds:
        person_signals = frozenset().union(*(r.signals for _, r in person_level))
        ids = ["", *(a.spec.id for a, _ in person_level)]
        members = ["toUInt8(0)", *(f"toUInt8(has_p AND {r.expression})" for _, r in person_level)]
        cols = _columns(person_signals, product="''")
        fresh.append(
            f"""SELECT audience_id, person, member, emptyArrayString() AS products, due
    FROM (
        SELECT person, [{", ".join(members)}] AS ms, due FROM (
            SELECT person, {cols + ", " if cols else ""}countIf(product = '') > 0 AS has_p,
                {_due_sql(thresholds)} AS due
            FROM st GROUP BY person
        )
    ) ARRAY JOIN ms AS member, {_array(ids)} AS audience_id"""
        )
    if product_level:
        product_signals = frozenset().union(*(r.signals for _, r in product_level))
        ids = [a.spec.id for a, _ in product_level]
        # A product counts for an audience when its events are among the audience's: the
        # product shows in the audience's any-event signal.
        anchors = [_anchor(a.spec).id for a, _ in product_level]
        seen = ", ".join(f"countIf(signal = {i}) > 0 AS seen_{i}" for i in sorted(set(anchors)))
        oks = [
            f"toUInt8(seen_{i} AND {r.expression})"
            for i, (_, r) in zip(anchors, product_level, strict=True)
        ]
        fresh.append(
            f"""SELECT audience_id, person, toUInt8(1) AS member, products, toInt64({NEVER}) AS due
    FROM (
        SELECT audience_id, person, arraySort(groupArrayIf(product, ok)) AS products FROM (
            SELECT person, product, [{", ".join(oks)}] AS oks FROM (
                SELECT person, product, {_columns(product_signals)}, {seen}
                FROM st WHERE product != '' GROUP BY person, product
            )
        ) ARRAY JOIN oks AS ok, {_array(ids)} AS audience_id
        GROUP BY audience_id, person
    ) WHERE notEmpty(products)"""
        )
    all_ids = [a.spec.id for a in evaluate]
    union = "\n    UNION ALL\n    ".join(fresh)
    needs: dict[Signal, Need] = {}
    for rule in rules:
        for signal, need in rule.needs:
            needs[signal] = needs.get(signal, need).merge(need)
    state = _state(db, signals, needs, incremental=incremental, source=source)
    if materialize:
        state = state.replace("st AS (", "st AS MATERIALIZED (", 1)
    members_sql = f"""WITH
{state}
SELECT audience_id, person, products, if(due >= {NEVER}, 0, due) AS due FROM (
    {union}
)
WHERE member = 1 OR (audience_id = '' AND due != 0)"""
    if materialize:
        members_sql += "\nSETTINGS enable_materialized_cte = 1"
    previous = previous_sql(db, all_ids, incremental=incremental)
    return EvaluationQuery(members_sql, previous, tuple(rules), thresholds, signals)


def previous_sql(db: str, audience_ids: Sequence[str], *, incremental: bool) -> str:
    """The stored memberships of ``audience_ids`` (of the ``persons`` when ``incremental``):
    (audience_id, person_id, state, version, entered_at, products)."""
    pfilter = " AND person_id IN {persons:Array(String)}" if incremental else ""
    return f"""SELECT audience_id, person_id, state, version, entered_at, products
FROM {db}.memberships FINAL
WHERE site_id = {{site:String}} AND audience_id IN {_array(audience_ids)}{pfilter}"""


def memberships_sql(db: str, persons: str) -> str:
    """The stored memberships of ``persons`` (an ``Array(Tuple(String, String))`` expression of
    (site, person) pairs, :func:`leadback.store.literals.string_pairs`), of any number of
    sites: a row per person, (site_id, person_id, their latest membership versions as JSON);
    :func:`stored_entries` reads them.

    Read by key from ``person_memberships`` (migration 0012: each person's latest membership
    versions as one key-value row, kept by a view on ``memberships``): from ``memberships``
    ``FINAL`` the read opened a granule per person in every part, a cost that grew with the
    table. One JSON text a person, parsed by orjson, costs less than a row per membership
    turned into Python values by the client."""
    return f"""SELECT site_id, person_id, toJSONString(v)
FROM {db}.person_memberships
WHERE k IN (SELECT concat(p.1, '\\0', p.2) FROM (SELECT arrayJoin({persons}) AS p))"""


def stored_entries(
    rows: Iterable[Sequence[Any]], audiences: Iterable[tuple[str, str]]
) -> Iterator[tuple[str, str, str, str, int, int, tuple[str, ...]]]:
    """Rows of :func:`memberships_sql` -> (site_id, audience_id, person_id, state, version,
    entered_at, products) of the (site, audience) pairs in ``audiences``."""
    wanted = set(audiences)
    for site, person, value in rows:
        for audience, state, version, entered, products in orjson.loads(value):
            if (site, audience) in wanted:
                yield site, audience, person, state, int(version), int(entered), tuple(products)


def _anchor(spec: AudienceSpec) -> Signal:
    """The any-event signal of a product-level audience's product key."""
    return any_event(spec.site, spec.products.property if spec.products else None)


def _due_sql(thresholds: frozenset[int]) -> str:
    """The next time after ``now`` at which a time condition could change for this person:
    a recent signal time plus a threshold (window end, idle limit...)."""
    if not thresholds:
        return f"toInt64({NEVER})"
    horizon = max(thresholds)
    ds = _array(sorted(thresholds))
    recent = f"groupArrayArray(arrayFilter(x -> x > {NOW} - {horizon}, arrayConcat(ts, [last_t])))"
    return (
        f"arrayMin(arrayConcat(arrayFilter(d -> d > {NOW}, arrayFlatten(arrayMap("
        f"k -> arrayMap(s -> s + k, {recent}), {ds}))), [toInt64({NEVER})]))"
    )
