"""The one statement an evaluation runs: the signal state of a set of persons, trimmed to what
the rules read, with each person's next due time.

Its text is fixed per database (the site, the persons, the signals, what each signal keeps and
the time thresholds are parameters), so ClickHouse's planning cost does not grow with the
number of audiences, and the rules run on the result in Python
(:mod:`leadback.audiences.rule_functions`). Per (person, signal, product) row:

* ``tt``: the times up to ``now`` the rules read, sorted: those in the signal's longest window
  and its ``latest`` few, or all of them for a signal some rule reads whole;
* ``last_t``: the latest event's time;
* ``due``: the earliest ``t + k > now`` over the row's recent times ``t`` and the site's
  thresholds ``k`` (window ends, idle limits...), :data:`~.compiler.NEVER` when none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from leadback.audiences.compiler import NEVER, Need
from leadback.audiences.rule_functions import SignalState
from leadback.audiences.signals import Signal, by_id


def state_sql(db: str) -> str:
    """The statement; parameters: ``site``, ``now``, ``vids`` (the persons' visitor ids),
    ``signals``, ``need_ids`` / ``need_window`` / ``need_latest`` (what a signal keeps when it
    is not read whole), ``thresholds``."""
    return f"""SELECT person, signal, product, tt, last_t,
    if(empty(recent), toInt64({NEVER}), arrayMin(arrayFilter(d -> d > {{now:Int64}},
        arrayFlatten(arrayMap(k -> arrayMap(x -> x + k, recent), {{thresholds:Array(Int64)}})))
        ) ) AS due
FROM (
    SELECT person, signal, product, last_t,
        arraySort(arrayFilter(x -> x <= {{now:Int64}}, ts)) AS s,
        indexOf({{need_ids:Array(UInt64)}}, signal) AS ni,
        if(ni = 0, s, arraySlice(s, greatest(toInt64(length(s)) - greatest(
            {{need_latest:Array(Int64)}}[ni],
            if({{need_window:Array(Int64)}}[ni] > 0,
                arrayCount(x -> x > {{now:Int64}} - {{need_window:Array(Int64)}}[ni], s), 0)
        ) + 1, 1))) AS tt,
        if(empty({{thresholds:Array(Int64)}}), emptyArrayInt64(), arrayFilter(
            x -> x > {{now:Int64}} - arrayMax({{thresholds:Array(Int64)}}),
            arrayPushBack(ts, last_t))) AS recent
    FROM (
        SELECT if(idm.person_id != '', idm.person_id, p.visitor_id) AS person,
            p.signal AS signal, p.product AS product,
            arrayMap(x -> x.1, groupUniqArrayMerge(p.times)) AS ts, max(p.last_t) AS last_t
        FROM {db}.person_signals AS p
        LEFT ANY JOIN (
            SELECT visitor_id, argMax(person_id, version) AS person_id FROM {db}.identities
            WHERE site_id = {{site:String}} AND visitor_id IN {{vids:Array(String)}}
            GROUP BY visitor_id
        ) AS idm ON p.visitor_id = idm.visitor_id
        WHERE p.site_id = {{site:String}} AND p.visitor_id IN {{vids:Array(String)}}
            AND p.signal IN {{signals:Array(UInt64)}}
        GROUP BY person, signal, product
    )
)"""


def state_params(
    signals: Iterable[Signal], needs: dict[Signal, Need], thresholds: Iterable[int]
) -> dict[str, Any]:
    """The parameters that depend on the audiences only (computed once per definition set)."""
    trimmed = [s for s in by_id(needs) if not needs[s].everything]
    return {
        "signals": [s.id for s in by_id(signals)],
        "need_ids": [s.id for s in trimmed],
        "need_window": [needs[s].window for s in trimmed],
        "need_latest": [needs[s].latest for s in trimmed],
        "thresholds": sorted(thresholds),
    }


@dataclass
class PersonStates:
    """What the statement returned, grouped: per person their person-level state, per
    (person, product) the product's, and the earliest due time."""

    persons: dict[str, SignalState] = field(default_factory=dict)
    products: dict[tuple[str, str], SignalState] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)


def group_states(rows: Sequence[Sequence[Any]]) -> PersonStates:
    """Rows of :func:`state_sql` -> :class:`PersonStates`."""
    found = PersonStates()
    persons, products, due = found.persons, found.products, found.due
    for person, signal, product, tt, last_t, row_due in rows:
        if product:
            state = products.get((person, product))
            if state is None:
                state = products[(person, product)] = SignalState()
        else:
            state = persons.get(person)
            if state is None:
                state = persons[person] = SignalState()
        state.times[signal] = tt
        state.last[signal] = last_t
        if row_due < due.get(person, NEVER):
            due[person] = row_due
    return found
