"""The evaluation statements for one site: who qualifies now, and the stored memberships.

See :mod:`leadback.audiences.compiler` for the shape. Parameters: ``site`` (String), ``now``
(Int64 ms), and for an incremental pass ``vids`` (the visitors whose events to read) and
``persons`` (the persons whose memberships to compare). The comparison itself is
:func:`leadback.audiences.diff.transitions`: done in ClickHouse it cost more to plan than to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leadback.audiences.compiler import (
    NEVER,
    NOW,
    CompiledRule,
    compile_rule,
    literal,
    product_ids_sql,
)
from leadback.audiences.rules import AudienceSpec


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


def _array(values: Sequence[str | int]) -> str:
    return "[" + ", ".join(literal(v) if isinstance(v, str) else str(v) for v in values) + "]"


def build_evaluation(
    db: str,
    evaluate: Sequence[VersionedAudience],
    site_audiences: dict[str, AudienceSpec],
    *,
    incremental: bool,
) -> EvaluationQuery:
    """The statements that evaluate ``evaluate`` (audiences of one site)."""
    rules = [compile_rule(a.spec, site_audiences) for a in evaluate]
    thresholds = frozenset().union(*(r.thresholds for r in rules)) if rules else frozenset()
    person_level = [(a, r) for a, r in zip(evaluate, rules, strict=True) if a.spec.products is None]
    product_level = [(a, r) for a, r in zip(evaluate, rules, strict=True) if a.spec.products]
    vfilter = " AND e.visitor_id IN {vids:Array(String)}" if incremental else ""
    ifilter = " AND visitor_id IN {vids:Array(String)}" if incremental else ""
    pfilter = " AND person_id IN {persons:Array(String)}" if incremental else ""

    ids = ["", *(a.spec.id for a, _ in person_level)]
    members = ["toUInt8(0)", *(f"toUInt8({r.expression})" for _, r in person_level)]
    due = _due_sql(thresholds)
    fresh = [
        f"""SELECT audience_id, person, member, emptyArrayString() AS products, due
    FROM (
        SELECT person, [{", ".join(members)}] AS ms, {due} AS due
        FROM ev GROUP BY person
    ) ARRAY JOIN ms AS member, {_array(ids)} AS audience_id"""
    ]
    for a, r in product_level:
        assert a.spec.products is not None
        fresh.append(
            f"""SELECT {literal(a.spec.id)} AS audience_id, person, toUInt8(1) AS member,
        products, toInt64({NEVER}) AS due
    FROM (
        SELECT person, arraySort(groupArrayIf(product, ok)) AS products FROM (
            SELECT person, product, toUInt8({r.expression}) AS ok
            FROM ev ARRAY JOIN {product_ids_sql(a.spec.products.property)} AS product
            GROUP BY person, product
        ) GROUP BY person
    ) WHERE notEmpty(products)"""
        )
    all_ids = [a.spec.id for a in evaluate]
    union = "\n    UNION ALL\n    ".join(fresh)
    members_sql = f"""WITH
ev AS (
    SELECT if(idm.person_id != '', idm.person_id, e.visitor_id) AS person,
        e.event_id AS event_id, e.type AS type, e.name AS name,
        toUnixTimestamp64Milli(e.received_at) AS t,
        e.properties AS properties, e.url AS url, e.referrer AS referrer, e.utm AS utm,
        e.click_ids AS click_ids, e.context AS context
    FROM {db}.events AS e
    LEFT ANY JOIN (
        SELECT visitor_id, argMax(person_id, version) AS person_id FROM {db}.identities
        WHERE site_id = {{site:String}}{ifilter} GROUP BY visitor_id
    ) AS idm ON e.visitor_id = idm.visitor_id
    WHERE e.site_id = {{site:String}}{vfilter}
        AND NOT e.bot AND NOT startsWith(e.visitor_id, 'e:') AND e.source != 'signal'
)
SELECT audience_id, person, products, if(due >= {NEVER}, 0, due) AS due FROM (
    {union}
)
WHERE member = 1 OR (audience_id = '' AND due < {NEVER})"""
    previous_sql = f"""SELECT audience_id, person_id, state, version, entered_at, products
FROM {db}.memberships FINAL
WHERE site_id = {{site:String}} AND audience_id IN {_array(all_ids)}{pfilter}"""
    return EvaluationQuery(members_sql, previous_sql, tuple(rules), thresholds)


def _due_sql(thresholds: frozenset[int]) -> str:
    """The next time after ``now`` at which a time condition could change for this person:
    an event's time plus a threshold (window end, idle limit...), or a future event's time."""
    if not thresholds:
        return f"toInt64({NEVER})"
    horizon = max(thresholds)
    ds = _array(sorted(thresholds))
    recent = f"groupArrayIf(t, t > {NOW} - {horizon})"
    return (
        f"arrayMin(arrayConcat(arrayFilter(d -> d > {NOW}, arrayFlatten(arrayMap("
        f"k -> arrayMap(s -> s + k, {recent}), {ds}))), groupArrayIf(t, t > {NOW}), "
        f"[toInt64({NEVER})]))"
    )
