"""The one statement an evaluation runs: the signal state of a set of persons (of any number of
sites: a round reads every site's at once), trimmed to what the rules read, with each person's
next due time.

Its text is fixed but for the persons (the signals, what each signal keeps and each site's time
thresholds are parameters), so ClickHouse's planning cost does not grow with the number of
audiences or sites, and the rules run on the result in Python
(:mod:`leadback.audiences.rule_functions`). The persons' visitors (their own id and the
visitors the identity graph gives them now) come first, from :func:`keys_sql`. Per (site,
person, signal, product) row:

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
from leadback.store.literals import as_set, strings


def keys_sql(db: str, ids: str) -> str:
    """The identity rows that decide whose stored values make the state of each of ``ids``'
    persons (an ``Array(Tuple(String, String))`` expression of (site, id) pairs, each a
    visitor or a person): every visitor an identity row ties to one of them, to the person one
    of them belongs to now, or that is one of them, with the person it belongs to now (its
    latest row). :func:`persons_of` and :func:`state_keys` read the result: a round resolves
    its visitors to persons and finds the persons' visitors in this one statement."""
    # The ids and the persons they belong to now (a visitor's latest row), then the rows naming
    # one of those (the bloom index `person_idx` finds them) or made by one (the sort key), then
    # each of those visitors' latest row.
    wanted = (
        "(SELECT arrayJoin(w0) UNION ALL SELECT (site_id, argMax(person_id, version)) "
        f"FROM {db}.identities WHERE (site_id, visitor_id) IN (SELECT arrayJoin(w0)) "
        "GROUP BY site_id, visitor_id)"
    )
    # The list inside, its alias read by the subqueries: the statement starts with SELECT
    # (clickhouse-connect looks for the word with a regular expression: through 200 KB of ids
    # from the start of a statement, ~2 ms and more under load).
    return (
        f"SELECT site_id, visitor_id, argMax(person_id, version) FROM {db}.identities "
        f"WHERE (site_id, visitor_id) IN (WITH {ids} AS w0 SELECT site_id, visitor_id "
        f"FROM {db}.identities "
        f"WHERE (site_id, person_id) IN {wanted} OR (site_id, visitor_id) IN {wanted}) "
        "GROUP BY site_id, visitor_id"
    )


def persons_of(
    visitors: Iterable[tuple[str, str]], rows: Iterable[Sequence[Any]]
) -> set[tuple[str, str]]:
    """The (site, person) each of ``visitors`` ((site, visitor) pairs) belongs to now, from the
    rows of :func:`keys_sql` for them: its latest identity row's, else its own id."""
    current = {(str(site), str(visitor)): str(person) for site, visitor, person in rows}
    return {(site, current.get((site, visitor), visitor)) for site, visitor in visitors}


@dataclass
class StateKeys:
    """The ``person_state`` keys (``site \\0 visitor``) a state read looks up. ``alone``: of the
    persons whose only visitor is their own id, read as they are stored (most persons: no
    identity row names them). ``linked`` / ``linked_persons``: the visitors of the others and,
    in the same order, whose they are; their values are merged per person."""

    alone: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    linked_persons: list[str] = field(default_factory=list)


def state_keys(persons: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> StateKeys:
    """The keys of ``persons`` ((site, person) pairs) from the rows of :func:`keys_sql`. A
    person's visitors: those whose latest identity row names them, and their own id unless
    an identity row of it names another person (merged away: no state of their own)."""
    current = {(str(site), str(visitor)): str(person) for site, visitor, person in rows}
    wanted = set(persons)
    tied: dict[tuple[str, str], list[str]] = {}
    for (site, visitor), person in current.items():
        if (site, person) in wanted:
            tied.setdefault((site, person), []).append(visitor)
    keys = StateKeys()
    for site, person in persons:
        visitors = tied.get((site, person), [])
        if (site, person) not in current:
            visitors = [*visitors, person]
        if visitors == [person]:
            keys.alone.append(f"{site}\0{person}")
            continue
        for visitor in visitors:
            keys.linked.append(f"{site}\0{visitor}")
            keys.linked_persons.append(person)
    return keys


# The columns of :func:`state_sql`: site, person, signal, product, tt, last_t, due.
STATE_WIDTH = 7


def state_sql(db: str, keys: StateKeys) -> str:
    """The statement for the persons of ``keys`` (:func:`state_keys`), of any sites.
    Parameters: ``now``; ``since`` (times up to it are past the events TTL, and a row whose
    latest time is goes, as the TTL will delete it); ``signals``; ``need_ids`` /
    ``need_window`` / ``need_latest`` (what a signal keeps when it is not read whole);
    ``th_sites`` / ``th_values`` (each site's thresholds)."""
    # A value holds one entry per (signal, product), its times a set (the feed's view and the
    # backfill's copy both write it so): a person alone is read as stored; only the persons
    # with several visitors pay for grouping (a third of the statement, without identities).
    branches = []
    if keys.alone:
        branches.append(f"""SELECT site_id AS site, visitor_id AS person, e.1 AS signal,
            e.2 AS product, arrayMap(x -> x.1, e.3) AS ts, e.4 AS last_t
        FROM {db}.person_state ARRAY JOIN v AS e
        WHERE k IN {as_set(strings(keys.alone))} AND e.1 IN {{signals:Array(UInt64)}}""")
    if keys.linked:
        linked = strings(keys.linked)
        branches.append(f"""SELECT site, person, signal, product,
            arrayMap(x -> x.1, arrayDistinct(groupArrayArray(times))) AS ts,
            max(last) AS last_t
        FROM (
            SELECT site_id AS site, transform(k, {linked}, {strings(keys.linked_persons)}, '')
                AS person, e.1 AS signal, e.2 AS product, e.3 AS times, e.4 AS last
            FROM {db}.person_state ARRAY JOIN v AS e
            WHERE k IN {as_set(linked)} AND e.1 IN {{signals:Array(UInt64)}}
        )
        GROUP BY site, person, signal, product""")
    if not branches:
        branches.append(
            "SELECT '' AS site, '' AS person, toUInt64(0) AS signal, '' AS product, "
            "emptyArrayInt64() AS ts, toInt64(0) AS last_t WHERE 0"
        )
    rows = "\n        UNION ALL\n        ".join(branches)
    # What a trimmed signal keeps is looked up with `transform` (a hash table built once):
    # `indexOf` and `[ni]` on the constant arrays copied them into every row (~40% of the
    # statement at 50M stored). A window of -1 marks a signal read whole (windows are >= 0).
    return f"""SELECT site, person, signal, product, tt, last_t,
    if(empty(recent), toInt64({NEVER}), arrayMin(arrayFilter(d -> d > {{now:Int64}},
        arrayFlatten(arrayMap(k -> arrayMap(x -> x + k, recent), ks))))) AS due
FROM (
    SELECT site, person, signal, product, last_t,
        {{th_values:Array(Array(Int64))}}[indexOf({{th_sites:Array(String)}}, site)] AS ks,
        arraySort(arrayFilter(x -> x <= {{now:Int64}} AND x > {{since:Int64}}, ts)) AS s,
        transform(signal, {{need_ids:Array(UInt64)}}, {{need_window:Array(Int64)}},
            toInt64(-1)) AS nw,
        transform(signal, {{need_ids:Array(UInt64)}}, {{need_latest:Array(Int64)}},
            toInt64(0)) AS nl,
        if(nw < 0, s, arraySlice(s, greatest(toInt64(length(s)) - greatest(nl,
            if(nw > 0, arrayCount(x -> x > {{now:Int64}} - nw, s), 0)) + 1, 1))) AS tt,
        if(empty(ks), emptyArrayInt64(),
            arrayFilter(x -> x > {{now:Int64}} - arrayMax(ks), arrayPushBack(ts, last_t))) AS recent
    FROM (
        {rows}
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


def group_states(rows: Iterable[Sequence[Any]]) -> dict[str, PersonStates]:
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
