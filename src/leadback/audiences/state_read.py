"""The one statement an evaluation runs: the signal state of a set of persons (of any number of
sites: a round reads every site's at once), trimmed to what the rules may read, and what an
evaluation derives from it in Python (:func:`derive`): the times the rules read and each
person's next due time.

Its text is fixed but for the persons (the signals, what each signal keeps and each site's time
thresholds are parameters), so ClickHouse's planning cost does not grow with the number of
audiences or sites, and the rules run on the result in Python
(:mod:`leadback.audiences.rule_functions`). It finds the persons' visitors itself (their own id
and the visitors the identity graph gives them now). Per (site, person, signal, product) row:

* ``ts`` / ``hs``: the times kept (sorted) and the hashes of their events: those after the
  TTL's ``since`` that are in the signal's longest window or among its ``latest`` few up to
  now, and any later ones; all of them for a signal some rule reads whole (and for a warm
  person: theirs are only the new rows). A cached state (:mod:`~.state_cache`) merges later
  reads into them by hash, so an event counts once;
* ``last_t``: the latest event's time;
* ``due``: the earliest ``t + k > now`` over the row's times ``t`` (and ``last_t``) and the
  site's thresholds ``k`` (window ends, idle limits...), :data:`~.compiler.NEVER` when none.

*Warm* persons (their state is cached) get only the rows stored since ``bound``: what the
rounds since their last read added, whatever the length of their history. Their rows' due
times are then those of the new times only: the earlier ones were written when they came.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from leadback.audiences.compiler import NEVER, Need
from leadback.audiences.rule_functions import SignalState
from leadback.audiences.signals import Signal

#: The marker row's site: the statement's last row carries the server's clock in ``last_t``.
CLOCK_ROW = ""


def _seen(db: str, persons: str) -> str:
    # Every visitor id that is or was one of theirs, their own and those an identity row names
    # (`person_idx` finds them); visitors merged elsewhere since fall to the HAVING.
    return f"""SELECT site_id, visitor_id FROM {db}.identities
        WHERE (site_id, person_id) IN {persons}
        UNION ALL
        SELECT site_id, person_id FROM {persons}"""


def state_sql(db: str, cold: str, warm: str | None = None) -> str:
    """The statement for ``cold`` (whole state) and ``warm`` (rows stored since ``bound``;
    None: nobody) persons of any sites, each an ``Array(Tuple(String, String))`` expression of
    (site, person) pairs (:func:`leadback.store.literals.string_pairs`). Parameters: ``now``;
    ``since`` (times up to it are past the events TTL, and a row whose latest time is goes, as
    the TTL will delete it); ``bound``; ``signals``; ``need_ids`` / ``need_window`` /
    ``need_latest`` (what a signal keeps when it is not read whole); ``th_sites`` /
    ``th_values`` (each site's thresholds); ``hashes`` (1: the events' hashes too, for a cache
    to merge by). A last row with site :data:`CLOCK_ROW` gives the server's clock (ms): the
    ``bound`` of the next read."""
    # Without warm persons the statement leaves their parts out (each costs 30-50 ms on a
    # round of 3,000 persons with long histories).
    if warm is None:
        ctes = f"seen_cold AS ({_seen(db, 'cold')})"
        rows = "(site_id, visitor_id) IN seen_cold"
        visitors = "(site_id, visitor_id) IN seen_cold"
        wanted = "(site, person) IN cold"
        whole = "ni = 0"
    else:
        pairs = f"SELECT k.1 AS site_id, k.2 AS person_id FROM (SELECT arrayJoin({warm}) AS k)"
        ctes = f"""warm AS ({pairs}),
    seen_cold AS ({_seen(db, "cold")}),
    seen_warm AS ({_seen(db, "warm")})"""
        rows = (
            "((site_id, visitor_id) IN seen_cold "
            "OR ((site_id, visitor_id) IN seen_warm AND stored_at >= {bound:Int64}))"
        )
        visitors = "(site_id, visitor_id) IN seen_cold OR (site_id, visitor_id) IN seen_warm"
        wanted = "(site, person) IN cold OR (site, person) IN warm"
        whole = "ni = 0 OR (site, person) IN warm"
    return f"""WITH
    cold AS (SELECT k.1 AS site_id, k.2 AS person_id FROM (SELECT arrayJoin({cold}) AS k)),
    {ctes}
SELECT site, person, signal, product,
    arrayMap(x -> x.1, kept) AS ts,
    if({{hashes:UInt8}} = 1, arrayMap(x -> x.2, kept), emptyArrayUInt64()) AS hs, last_t,
    if(empty(recent), toInt64({NEVER}), arrayMin(arrayFilter(d -> d > {{now:Int64}},
        arrayFlatten(arrayMap(k -> arrayMap(x -> x + k, recent), ks))))) AS due
FROM (
    SELECT site, person, signal, product, last_t,
        {{th_values:Array(Array(Int64))}}[indexOf({{th_sites:Array(String)}}, site)] AS ks,
        arraySort(arrayFilter(x -> x.1 > {{since:Int64}}, pairs)) AS s,
        if(empty(ks), emptyArrayInt64(), arrayFilter(x -> x > {{now:Int64}} - arrayMax(ks),
            arrayPushBack(arrayMap(x -> x.1, s), last_t))) AS recent,
        arrayCount(x -> x.1 <= {{now:Int64}}, s) AS past,
        indexOf({{need_ids:Array(UInt64)}}, signal) AS ni,
        if({whole}, s, arraySlice(s, greatest(1, least(
            arrayFirstIndex(x -> x.1 > {{now:Int64}} - {{need_window:Array(Int64)}}[ni],
                arrayPushBack(s, (toInt64({NEVER}), toUInt64(0)))),
            past - {{need_latest:Array(Int64)}}[ni] + 1)))) AS kept
    FROM (
        SELECT p.site_id AS site, if(idm.person_id != '', idm.person_id, p.visitor_id) AS person,
            p.signal AS signal, p.product AS product,
            arrayDistinct(groupArrayArray(p.times)) AS pairs, max(p.last_t) AS last_t
        FROM (
            SELECT site_id, visitor_id, signal, product, times, last_t
            FROM {db}.person_signals
            PREWHERE {rows} AND signal IN {{signals:Array(UInt64)}}
        ) AS p
        LEFT ANY JOIN (
            SELECT site_id, visitor_id, argMax(person_id, version) AS person_id
            FROM {db}.identities
            WHERE {visitors}
            GROUP BY site_id, visitor_id
        ) AS idm ON p.site_id = idm.site_id AND p.visitor_id = idm.visitor_id
        GROUP BY site, person, signal, product
        HAVING {wanted}
    )
    WHERE last_t > {{since:Int64}}
)
UNION ALL
SELECT '{CLOCK_ROW}', '', 0, '', [], [], toUnixTimestamp64Milli(now64(3)), 0"""


@dataclass(frozen=True)
class Keep:
    """What evaluating a set of audiences reads of a person's rows: which ``signals``, per
    signal not read whole its ``(window, latest)`` (:class:`~.compiler.Need`), and the site's
    time ``thresholds`` (ascending) the due time is computed with."""

    signals: frozenset[int]
    trim: Mapping[int, tuple[int, int]]
    thresholds: tuple[int, ...]


def keep_of(
    signals: Iterable[Signal], needs: dict[Signal, Need], thresholds: Iterable[int]
) -> Keep:
    """The :class:`Keep` of audiences reading ``signals`` with ``needs`` and ``thresholds``."""
    return Keep(
        signals=frozenset(s.id for s in signals),
        trim={s.id: (n.window, n.latest) for s, n in needs.items() if not n.everything},
        thresholds=tuple(sorted(set(thresholds))),
    )


def state_params(keeps: Mapping[str, Keep]) -> dict[str, Any]:
    """The statement's audience parameters for the :class:`Keep` of each site read (signal ids
    are per site): the signals, what each keeps when it is not read whole, and each site's
    thresholds (a row's due time)."""
    signals: set[int] = set()
    trimmed: dict[int, tuple[int, int]] = {}
    for keep in keeps.values():
        signals |= keep.signals
        trimmed.update(keep.trim)
    ids = sorted(trimmed)
    sites = sorted(keeps)
    return {
        "signals": sorted(signals),
        "need_ids": ids,
        "need_window": [trimmed[i][0] for i in ids],
        "need_latest": [trimmed[i][1] for i in ids],
        "th_sites": sites,
        "th_values": [list(keeps[site].thresholds) for site in sites],
    }


@dataclass(slots=True)
class Row:
    """One (person, signal, product) row of the statement: the times kept, sorted, with the
    hashes of their events (``hs[i]`` is ``ts[i]``'s), the latest time, and the due time the
    statement computed (of what it read)."""

    ts: list[int]
    hs: list[int]
    last: int
    due: int = 0

    def merge(self, ts: Sequence[int], hs: Sequence[int], last: int) -> None:
        """Add a later read's times (the rows stored since): an event already held (same time,
        same hash) counts once."""
        self.last = max(self.last, last)
        mine, hashes = self.ts, self.hs
        for t, h in zip(ts, hs, strict=True):
            i = bisect_right(mine, t)
            if mine and i == len(mine) and mine[-1] < t:
                mine.append(t)
                hashes.append(h)
                continue
            j = i
            while j > 0 and mine[j - 1] == t:
                if hashes[j - 1] == h:
                    break
                j -= 1
            else:
                mine.insert(i, t)
                hashes.insert(i, h)


#: A person's rows by (signal, product).
Rows = dict[tuple[int, str], Row]


@dataclass
class StateRead:
    """What the statement returned: per (site, person) their rows, and the server's clock."""

    rows: dict[tuple[str, str], Rows] = field(default_factory=dict)
    clock: int = 0


def read_rows(result: Sequence[Sequence[Any]]) -> StateRead:
    """Rows of :func:`state_sql` -> :class:`StateRead`."""
    read = StateRead()
    by_person = read.rows
    for site, person, signal, product, ts, hs, last_t, due in result:
        if site == CLOCK_ROW:
            read.clock = int(last_t)
            continue
        key = (site, person)
        rows = by_person.get(key)
        if rows is None:
            rows = by_person[key] = {}
        rows[(signal, product)] = Row(ts, hs, last_t, due)  # lists of the driver's, now ours
    return read


@dataclass
class PersonStates:
    """The state the rules run on, for one site: per person their person-level state, per
    (person, product) the product's, and the earliest due time."""

    persons: dict[str, SignalState] = field(default_factory=dict)
    products: dict[tuple[str, str], SignalState] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)


def derive(
    person: str,
    rows: Rows,
    keep: Keep,
    now: int,
    since: int,
    into: PersonStates,
    *,
    signals: frozenset[int] | None = None,
    exact: bool = False,
) -> None:
    """Add ``person``'s state to ``into``: per signal of ``keep`` (or of ``signals``) the times
    up to ``now`` the rules read (the suffix its window and ``latest`` say, or all after
    ``since``) and its latest time. ``exact``: the rows were read at ``now`` for ``keep``, so
    their times up to ``now`` are already those."""
    chosen = keep.signals if signals is None else signals
    trim = keep.trim
    state: SignalState | None = None
    for (signal, product), row in rows.items():
        last = row.last
        if last <= since or signal not in chosen:
            continue
        ts = row.ts
        if exact and (not ts or ts[-1] <= now):
            tt: Sequence[int] = ts
        elif ts:
            hi = bisect_right(ts, now)
            lo = bisect_right(ts, since, 0, hi) if ts[0] <= since else 0
            need = trim.get(signal)
            if need is None:
                tt = ts[lo:hi]
            else:
                window, n = need
                if window:
                    n = max(n, hi - max(lo, bisect_right(ts, now - window, lo, hi)))
                tt = ts[max(lo, hi - n) : hi] if n else ()
        else:
            tt = ()
        if product:
            target = into.products.get((person, product))
            if target is None:
                target = into.products[(person, product)] = SignalState()
        else:
            if state is None:
                state = into.persons.get(person)
                if state is None:
                    state = into.persons[person] = SignalState()
            target = state
        target.times[signal] = tt
        target.last[signal] = last


def group_states(result: Sequence[Sequence[Any]], now: int) -> dict[str, PersonStates]:
    """Rows of :func:`state_sql` read for one program per site (no cache) -> the state the
    rules run on, per site: :func:`derive` and :func:`add_due` in one pass, the rows' times
    taken as read (up to ``now``)."""
    by_site: dict[str, PersonStates] = {}
    for site, person, signal, product, ts, _, last_t, row_due in result:
        if site == CLOCK_ROW:
            continue
        found = by_site.get(site)
        if found is None:
            found = by_site[site] = PersonStates()
        if product:
            state = found.products.get((person, product))
            if state is None:
                state = found.products[(person, product)] = SignalState()
        else:
            state = found.persons.get(person)
            if state is None:
                state = found.persons[person] = SignalState()
        state.times[signal] = ts if not ts or ts[-1] <= now else ts[: bisect_right(ts, now)]
        state.last[signal] = last_t
        if row_due < found.due.get(person, NEVER):
            found.due[person] = row_due
    return by_site


def add_due(person: str, rows: Rows, into: PersonStates) -> None:
    """The person's next due time from the rows read: the earliest of theirs."""
    due = min((row.due for row in rows.values()), default=NEVER)
    if due < into.due.get(person, NEVER):
        into.due[person] = due
