"""The one statement an evaluation runs: the signal state of a set of persons (of any number of
sites: a round reads every site's at once), trimmed to what the rules read, with each person's
next due time.

Its text is fixed but for the persons (the signals, what each signal keeps and each site's time
thresholds are parameters), so ClickHouse's planning cost does not grow with the number of
audiences or sites, and the rules run on the result in Python
(:mod:`leadback.audiences.rule_functions`). It finds the persons' visitors itself (their own id
and the visitors the identity graph gives them now). Per (site, person, signal, product) row:

* ``tt``: the times up to ``now`` the rules read, sorted: those in the signal's longest window
  and its ``latest`` few, or all of them for a signal some rule reads whole;
* ``last_t``: the latest event's time;
* ``due``: the earliest ``t + k > now`` over the row's recent times ``t`` and the site's
  thresholds ``k`` (window ends, idle limits...), :data:`~.compiler.NEVER` when none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from leadback.audiences.compiler import NEVER, Need
from leadback.audiences.rule_functions import SignalState
from leadback.audiences.signals import Signal, by_id


def state_sql(db: str, persons: str) -> str:
    """The statement for ``persons``: who, of any sites, as an ``Array(Tuple(String, String))``
    expression of (site, person) pairs (:func:`leadback.store.literals.string_pairs`).
    Parameters: ``now``; ``since`` (times up to it are past the events TTL, and a row whose
    latest time is goes, as the TTL will delete it); ``signals``; ``need_ids`` /
    ``need_window`` / ``need_latest`` (what a signal keeps when it is not read whole);
    ``th_sites`` / ``th_values`` (each site's thresholds)."""
    # The persons once: `wanted`. `seen`: every visitor id
    # that is or was one of theirs, their own and those an identity row names (`person_idx`
    # finds them); visitors merged elsewhere since fall to the HAVING.
    return f"""WITH
    wanted AS (SELECT k.1 AS site_id, k.2 AS person_id FROM (SELECT arrayJoin({persons}) AS k)),
    seen AS (
        SELECT site_id, visitor_id FROM {db}.identities WHERE (site_id, person_id) IN wanted
        UNION ALL
        SELECT site_id, person_id FROM wanted
    )
SELECT site, person, signal, product, tt, last_t,
    if(empty(recent), toInt64({NEVER}), arrayMin(arrayFilter(d -> d > {{now:Int64}},
        arrayFlatten(arrayMap(k -> arrayMap(x -> x + k, recent), ks))))) AS due
FROM (
    SELECT site, person, signal, product, last_t,
        {{th_values:Array(Array(Int64))}}[indexOf({{th_sites:Array(String)}}, site)] AS ks,
        arraySort(arrayFilter(x -> x <= {{now:Int64}} AND x > {{since:Int64}}, ts)) AS s,
        indexOf({{need_ids:Array(UInt64)}}, signal) AS ni,
        if(ni = 0, s, arraySlice(s, greatest(toInt64(length(s)) - greatest(
            {{need_latest:Array(Int64)}}[ni],
            if({{need_window:Array(Int64)}}[ni] > 0,
                arrayCount(x -> x > {{now:Int64}} - {{need_window:Array(Int64)}}[ni], s), 0)
        ) + 1, 1))) AS tt,
        if(empty(ks), emptyArrayInt64(),
            arrayFilter(x -> x > {{now:Int64}} - arrayMax(ks), arrayPushBack(ts, last_t))) AS recent
    FROM (
        SELECT p.site_id AS site, if(idm.person_id != '', idm.person_id, p.visitor_id) AS person,
            p.signal AS signal, p.product AS product,
            arrayMap(x -> x.1, arrayDistinct(groupArrayArray(p.times))) AS ts,
            max(p.last_t) AS last_t
        FROM (
            SELECT site_id, visitor_id, e.1 AS signal, e.2 AS product, e.3 AS times,
                e.4 AS last_t
            FROM {db}.person_state ARRAY JOIN v AS e
            WHERE k IN (SELECT concat(site_id, '\\0', visitor_id) FROM seen)
                AND e.1 IN {{signals:Array(UInt64)}}
        ) AS p
        LEFT ANY JOIN (
            SELECT site_id, visitor_id, argMax(person_id, version) AS person_id
            FROM {db}.identities
            WHERE (site_id, visitor_id) IN seen
            GROUP BY site_id, visitor_id
        ) AS idm ON p.site_id = idm.site_id AND p.visitor_id = idm.visitor_id
        GROUP BY site, person, signal, product
        HAVING (site, person) IN wanted
    )
    WHERE last_t > {{since:Int64}}
)"""


def trim_times(
    times: Sequence[int], need: tuple[int, int] | None, *, now: int, since: int
) -> list[int]:
    """``tt`` of :func:`state_sql` in Python: ``times`` up to ``now`` and after ``since``,
    sorted, trimmed to what the rules read (``need``: (window, latest) of a trimmed signal;
    ``None``: a signal read whole)."""
    kept = sorted(t for t in times if since < t <= now)
    if need is None:
        return kept
    window, latest = need
    in_window = sum(1 for t in kept if t > now - window) if window > 0 else 0
    keep = max(latest, in_window)
    return kept[max(len(kept) - keep, 0) :] if keep > 0 else []


def due_time(times: Sequence[int], last_t: int, thresholds: Sequence[int], *, now: int) -> int:
    """``due`` of :func:`state_sql` in Python for one row: the earliest ``t + k`` after ``now``
    over its recent times (within the largest threshold: each has one such moment) and the
    site's thresholds ``k``; :data:`NEVER` with no recent time."""
    if not thresholds:
        return NEVER
    oldest = now - max(thresholds)
    recent = [t for t in (*times, last_t) if t > oldest]
    if not recent:
        return NEVER
    return min(t + k for k in thresholds for t in recent if t + k > now)


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
    """What the statement returned for one site, grouped: per person their person-level state,
    per (person, product) the product's, and the earliest due time."""

    persons: dict[str, SignalState] = field(default_factory=dict)
    products: dict[tuple[str, str], SignalState] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)


def site_params(by_site: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The statement's audience parameters for several sites at once, from each site's
    :func:`state_params`: the signals (ids are per site) with what they keep, and each site's
    thresholds."""
    signals: set[int] = set()
    needs: dict[int, tuple[int, int]] = {}
    for params in by_site.values():
        signals.update(params["signals"])
        needs.update(
            zip(
                params["need_ids"],
                zip(params["need_window"], params["need_latest"], strict=True),
                strict=True,
            )
        )
    ids = sorted(needs)
    return {
        "signals": sorted(signals),
        "need_ids": ids,
        "need_window": [needs[i][0] for i in ids],
        "need_latest": [needs[i][1] for i in ids],
        "th_sites": sorted(by_site),
        "th_values": [list(by_site[site]["thresholds"]) for site in sorted(by_site)],
    }


def group_states(rows: Sequence[Sequence[Any]]) -> dict[str, PersonStates]:
    """Rows of :func:`state_sql` -> :class:`PersonStates` per site."""
    # Tens of thousands of rows a round at 50M stored events: one dict lookup per row where
    # possible, and a state made with its first signal.
    by_site: dict[str, PersonStates] = {}
    for site, person, signal, product, tt, last_t, row_due in rows:
        found = by_site.get(site)
        if found is None:
            found = by_site[site] = PersonStates()
        states: dict[Any, SignalState] = found.products if product else found.persons
        key = (person, product) if product else person
        state = states.get(key)
        if state is None:
            states[key] = SignalState({signal: tt}, {signal: last_t})
        else:
            state.times[signal] = tt
            state.last[signal] = last_t
        if row_due < NEVER and row_due < found.due.get(person, NEVER):
            found.due[person] = row_due
    return by_site
