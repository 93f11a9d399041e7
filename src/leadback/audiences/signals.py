"""Signals: the per-person state audiences are evaluated on, kept as events arrive.

A *signal* is one event predicate of one site (an audience rule's ``did``/``then`` step, or "any
event" for ``idle``/``seen_within``), optionally per product. For every visitor (and product) the
signal state keeps the times of the events that matched it — as a set of
``(occurred_at ms, event hash)`` pairs, so a retried or re-imported event counts once (every
write merges by union) — and the time of the latest, in one key-value row per visitor
(``person_state``, see :mod:`~.person_state`). A rule is then a few array functions over those times
(:mod:`leadback.audiences.compiler`), and evaluating a person reads one value instead of the
person's whole event history.

Who fills it:

* a materialized view on ``events`` (the *feed*, :func:`feed_sql`) matches every inserted block
  against the signals of the loaded audiences: each event is tested once, when it is stored;
* a new signal is *backfilled* over the history already stored (:mod:`~.backfill`), range by
  range of visitors, into ``person_signals``, then merged into the visitors' values. Both may
  write the same event: the set semantics make that harmless.

A signal's id is a hash of what it tests (site, product key, predicate), so audiences that test
the same thing share it and a definition that changes only its windows needs no backfill.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from leadback.audiences.predicates import literal, product_ids_sql
from leadback.audiences.rules import EventMatch
from leadback.audiences.step_table import StepTable, constant

#: Events audiences never see (bots, visitors without a recognisable id, channel signals).
ELIGIBLE = "NOT bot AND NOT startsWith(visitor_id, 'e:') AND source != 'signal'"
#: The per-event value the feed produces: (signal, product, keep times).
ENTRY_TYPE = "Array(Tuple(UInt64, String, UInt8))"
FEED_PREFIX = "person_signals_feed_"
#: The layout of ``person_signals`` the feed writes (``times`` as a plain array since 0007) and
#: the shape of its statement (tests in an inner select): a view of another is replaced at start.
FEED_LAYOUT = "arrays:step-table:signal-rows"
#: Layouts feeds were made with before; :func:`older_feed_names` finds their views.
OLDER_FEED_LAYOUTS = ("arrays:inner-tests", "arrays:step-table")


@dataclass(frozen=True)
class Signal:
    """An event predicate of one site whose matching events are kept per visitor.

    ``predicate``: SQL over one ``events`` row (``1``: any event); ``product_key``: kept per
    product id found in ``properties.<key>`` / ``properties.items[].<key>`` (``None``: per
    person); ``times``: keep every matching time (else only the latest, which is all
    ``idle``/``seen_within`` need); ``match``: the step the predicate came from."""

    site: str
    predicate: str
    product_key: str | None
    times: bool
    #: The rule step ``predicate`` was written from (for the Python tests,
    #: :mod:`~.event_tests`); not part of the signal's identity.
    match: EventMatch | None = field(default=None, compare=False, repr=False)

    @cached_property
    def id(self) -> int:
        """Stable id: the same test on the same site is the same signal in every process
        (computed once: rounds ask for it per audience)."""
        text = f"{self.site}\x00{self.product_key or ''}\x00{int(self.times)}\x00{self.predicate}"
        value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
        return value or 1

    @cached_property
    def column(self) -> str:
        """The column an evaluation statement exposes it as."""
        return f"s{self.id:x}"


def by_id(signals: Iterable[Signal]) -> list[Signal]:
    """``signals`` once each, in a stable order (statements and view names do not churn)."""
    return sorted(set(signals), key=lambda s: s.id)


def any_event(site: str, product_key: str | None) -> Signal:
    """The signal of every event (of a product, for product-level audiences)."""
    return Signal(site, "1", product_key, times=False)


def _array(items: Iterable[str]) -> str:
    return "[" + ", ".join(items) + "]"


def entries_select(signals: Iterable[Signal], columns: Mapping[str, str], source: str) -> str:
    """A select of ``columns`` (alias -> SQL over one ``events`` row) and ``entries``: the
    (signal, product, keep times) entries each row of ``source`` (``events`` and a condition;
    the row needs ``site_id``) makes for ``signals`` of any number of sites.

    ClickHouse analyses the feed's statement at every insert, so its text does not grow with
    the signals: the distinct steps are one constant (:class:`~.step_table.StepTable`, each
    step once, whatever the number of sites and signals testing it; step 0 is "any event"),
    and so are, per site, its signals as (step, signal) pairs and, per site and event type,
    the steps a row of that type can pass. One lambda tests those steps (``_pass``), and the
    signals whose step passed make the entries. Constants are JSON in a string
    (:func:`~.step_table.constant`): read once, where literals are analysed node by node. The
    tests run in an inner select: where ``entries`` named them as aliases, the analyser
    expanded them inside each lambda again."""
    inner = ", ".join(f"{expr} AS {name}" for name, expr in columns.items())
    outer = ", ".join(columns)
    chosen = by_id(signals)
    if not chosen:
        empty = f"CAST([], '{ENTRY_TYPE}')"
        return f"SELECT {outer}, {empty} AS entries FROM (SELECT {inner} FROM {source})"
    for s in chosen:
        if s.match is None and s.predicate != "1":
            raise ValueError(f"signal {s.id} has no rule step to feed")
    # Step 0 is "any event"; the others are positions in the table (1-based).
    steps = sorted({s.predicate: s.match for s in chosen if s.match is not None}.items())
    table = StepTable([m for _, m in steps])
    step_of = {p: i + 1 for i, (p, _) in enumerate(steps)} | {"1": 0}
    keys = sorted({s.product_key for s in chosen if s.product_key is not None})
    key_index = {k: i + 1 for i, k in enumerate(keys)}
    sites = sorted({s.site for s in chosen})
    person = constant(
        [
            [
                [step_of[s.predicate], s.id, int(s.times)]
                for s in chosen
                if s.site == site and s.product_key is None
            ]
            for site in sites
        ],
        "Array(Array(Tuple(UInt32, UInt64, UInt8)))",
    )
    product = constant(
        [
            [
                [step_of[s.predicate], key_index[s.product_key], s.id, int(s.times)]
                for s in chosen
                if s.site == site and s.product_key is not None
            ]
            for site in sites
        ],
        "Array(Array(Tuple(UInt32, UInt32, UInt64, UInt8)))",
    )
    # Per site and event type (first: a type no step names), the steps a row can pass: the
    # type rules out most steps, so a row tests only these.
    types = sorted({t for _, m in steps for t in m.types})
    step_types = {i + 1: set(m.types) for i, (_, m) in enumerate(steps)}
    site_steps = {
        site: sorted({step_of[s.predicate] for s in chosen if s.site == site}) for site in sites
    }
    candidates = constant(
        [
            [[i for i in site_steps[site] if i == 0 or t in step_types[i]] for t in ["", *types]]
            for site in sites
        ],
        "Array(Array(Array(UInt32)))",
    )
    ids = _array(product_ids_sql(k) for k in keys) if keys else "[emptyArrayString()]"
    test = StepTable.test_sql("i", types=False)
    return f"""SELECT {outer},
        arrayConcat(
            arrayMap(x -> (x.2, '', toUInt8(x.3)), arrayFilter(x -> has(_pass, x.1), _person)),
            arrayFlatten(arrayMap(x -> arrayMap(p -> (x.3, p, toUInt8(x.4)), _ids[x.2]),
                arrayFilter(x -> has(_pass, x.1), _product)))
        ) AS entries
    FROM (
        SELECT {inner}, _person, _product,
            arrayFilter(i -> i = 0 OR {test}, _candidates) AS _pass, {ids} AS _ids
        FROM (
            SELECT *, indexOf({_array(literal(site) for site in sites)}, site_id) AS _si,
                {person}[_si] AS _person,
                {candidates}[_si][indexOf({constant(types, "Array(String)")}, type) + 1]
                    AS _candidates,
                {product}[_si] AS _product, {table.columns()}
            FROM {source}
        )
    )"""


#: The columns of an ``events`` row the signal state is made of (see :func:`entries_select`).
ROW_COLUMNS = {
    "site_id": "site_id",
    "visitor_id": "visitor_id",
    "t": "toUnixTimestamp64Milli(occurred_at)",
    "h": "cityHash64(event_id)",
}


def state_select(db: str, signals: Iterable[Signal], where: str = "") -> str:
    """``person_signals`` rows of the ``events`` rows matching ``where``:
    the feed's statement, and the backfill's for one range."""
    condition = ELIGIBLE + (f" AND {where}" if where else "")
    return f"""SELECT site_id, visitor_id, entry.1 AS signal, entry.2 AS product,
    groupUniqArrayIf((t, h), entry.3 = 1) AS times, max(t) AS last_t
FROM ({entries_select(signals, ROW_COLUMNS, f"{db}.events WHERE {condition}")})
ARRAY JOIN entries AS entry
GROUP BY site_id, visitor_id, signal, product"""


def feed_name(signals: Iterable[Signal], layout: str = FEED_LAYOUT) -> str:
    """The feed view's name for a signal set: a new set is a new view, created before the old
    one is dropped, so no inserted block is missed in between."""
    # The layout is part of the name: a view of an older layout is replaced.
    ids = layout + ":" + ",".join(str(s.id) for s in by_id(signals))
    return FEED_PREFIX + hashlib.sha256(ids.encode()).hexdigest()[:16]


def older_feed_names(signals: Iterable[Signal]) -> list[str]:
    """The names the same signal set's feed had under older layouts: the same signals fed
    by an older statement, dropped once the new view exists."""
    chosen = list(signals)
    return [feed_name(chosen, layout) for layout in OLDER_FEED_LAYOUTS]


def feed_sql(db: str, signals: Iterable[Signal]) -> str:
    """The materialized view feeding the signal state from every insert into ``events``: into
    ``signal_rows``, whose view merges them into the visitors' values of ``person_state``
    (migrations 0011 and 0014)."""
    chosen = list(signals)
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{feed_name(chosen)} "
        f"TO {db}.signal_rows AS\n{state_select(db, chosen)}"
    )
