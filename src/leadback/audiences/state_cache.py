"""The segmenter's memory of its recent persons: their signal rows and stored memberships.

A person's state is read whole once (:mod:`~.state_read`: the times the rules may read, with
their events' hashes); after that a round reads only the ``person_signals`` rows stored since
the previous round's read (``bound``) and merges them in by hash, and takes the person's
memberships from here instead of reading them. So a round's cost follows what its events added,
not how long the persons' histories are.

It is right only while this process is the one writer of the persons' rows and memberships
(the settings turn it on with chDB, which one process owns, or when told one segmenter runs).
Everything else that could make it wrong drops entries:

* a definition or live-set change (what the rows keep changes): all of it;
* identity merges and splits (a person's visitors change): those persons;
* erasure, a deleted audience's exits, a refresh's evaluations, memberships restored from the
  change log: all of it;
* any failure while a round or timer pass evaluates or commits: all of it (a retry reads again).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from leadback.audiences.diff import Stored
from leadback.audiences.state_read import Keep, Row, Rows
from leadback.logs import get_logger

log = get_logger(__name__)

#: Rows longer than this are trimmed to what the rules may read after a merge.
_TRIM_AT = 64
#: Rows written up to this long before the previous read are read again: the set semantics
#: make that harmless, and a server clock that stepped back by less is no harm either.
CLOCK_MARGIN_MS = 1_000


@dataclass
class Entry:
    """One cached person: their rows by (signal, product) and their stored memberships of
    every live audience of their site (absent: never a member)."""

    rows: Rows
    memberships: dict[str, Stored] = field(default_factory=dict)


class StateCache:
    """Least-recently-used entries by (site, person), at most ``capacity`` (0: off)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._generation = -1
        #: The server's clock at the last round's read: warm persons read rows stored since.
        self.bound: int | None = None
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._entries)

    def sync(self, generation: int) -> None:
        """Drop everything when the definitions (what the rows keep) changed."""
        if generation != self._generation:
            if self._entries:
                log.info("state cache cleared: definitions changed", persons=len(self._entries))
            self._entries.clear()
            self._generation = generation

    def read_bound(self) -> int:
        """The ``bound`` a warm read uses (0 when there is none: then nobody is warm)."""
        return 0 if self.bound is None else self.bound - CLOCK_MARGIN_MS

    def get(self, site: str, person: str) -> Entry | None:
        """The cached entry, marked as recently used."""
        if self.bound is None:
            return None
        entry = self._entries.get((site, person))
        if entry is not None:
            self._entries.move_to_end((site, person))
            self.hits += 1
        else:
            self.misses += 1
        return entry

    def put(self, site: str, person: str, entry: Entry) -> None:
        self._entries[(site, person)] = entry
        self._entries.move_to_end((site, person))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def evict(self, site: str, persons: Iterable[str]) -> None:
        for person in persons:
            self._entries.pop((site, person), None)

    def clear(self, reason: str) -> None:
        if self._entries:
            log.info("state cache cleared", reason=reason, persons=len(self._entries))
        self._entries.clear()

    def apply(self, site: str, person: str, audience_id: str, stored: Stored) -> None:
        """A membership written for a cached person."""
        entry = self._entries.get((site, person))
        if entry is not None:
            entry.memberships[audience_id] = stored


def merge(entry: Entry, rows: Rows, keep: Keep, now: int, since: int) -> None:
    """Merge a warm read's ``rows`` into ``entry``, trimming long rows to what ``keep`` (every
    live audience of the site) may read from ``now`` on."""
    mine = entry.rows
    for key, row in rows.items():
        held = mine.get(key)
        if held is None:
            mine[key] = held = Row([], [], 0)
        held.merge(row.ts, row.hs, row.last)
        if len(held.ts) > _TRIM_AT:
            trim(held, key[0], keep, now, since)


def trim(row: Row, signal: int, keep: Keep, now: int, since: int) -> None:
    """Drop the times no rule may read again: up to ``since``, and for a signal not read whole
    those before its window that are not among its latest few up to ``now`` (times only leave
    windows as ``now`` grows, and later events only push older ones out of the latest)."""
    ts, hs = row.ts, row.hs
    lo = bisect_right(ts, since)
    need = keep.trim.get(signal)
    if need is not None:
        past = bisect_right(ts, now)
        start = min(bisect_right(ts, now - need[0]), max(0, past - need[1]))
        lo = max(lo, start)
    if lo:
        del ts[:lo]
        del hs[:lo]
