"""Due persons waiting for the next round: the timer's hand-over to the segmenter's rounds.

While rounds run, an evaluation of the persons whose time conditions came due costs its
statements once if the next round evaluates them with its own persons, instead of once more
apart (on a big table a statement costs about the same for a few persons as for a round's).
The timer adds what it finds; a round takes up to a chunk and gives them back done once its
outcome is written, so a round that fails leaves them waiting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: A round within this long: rounds are running, and the timer hands its due persons over.
ROUNDS_RUNNING_S = 1.0


class DueWaiting:
    """Due persons (site -> persons) waiting for a round, and when a round last ran."""

    def __init__(self) -> None:
        self._persons: dict[str, set[str]] = {}
        self._last_round = -ROUNDS_RUNNING_S
        self._in_round = 0

    def round_started(self, monotonic: float) -> None:
        """A round started at ``monotonic``."""
        self._in_round += 1
        self._last_round = monotonic

    def round_ended(self, monotonic: float) -> None:
        """A round (started with :meth:`round_started`) ended at ``monotonic``, done or not."""
        self._in_round -= 1
        self._last_round = monotonic

    def rounds_running(self, monotonic: float) -> bool:
        """Whether a round is in progress or one ended within :data:`ROUNDS_RUNNING_S` of
        ``monotonic``."""
        # A round in progress counts however long it has run: under load a round can take
        # longer than the window, and a timer that took it for idle evaluated its due persons
        # itself, holding the lock the next round waited for.
        return self._in_round > 0 or monotonic - self._last_round < ROUNDS_RUNNING_S

    def add(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Add (site, person) pairs; returns how many persons are waiting now."""
        for site, person in pairs:
            self._persons.setdefault(site, set()).add(person)
        return sum(len(persons) for persons in self._persons.values())

    def take(self, limit: int) -> dict[str, set[str]]:
        """Up to ``limit`` waiting persons for a round, left waiting until :meth:`done`."""
        taken: dict[str, set[str]] = {}
        room = limit
        for site in sorted(self._persons):
            if room <= 0:
                break
            persons = sorted(self._persons[site])[:room]
            taken[site] = set(persons)
            room -= len(persons)
        return taken

    def done(self, taken: Mapping[str, set[str]]) -> None:
        """The persons a round evaluated and wrote the outcome of."""
        for site, persons in taken.items():
            waiting = self._persons.get(site)
            if waiting is not None:
                waiting -= persons
                if not waiting:
                    del self._persons[site]

    def drain(self) -> list[tuple[str, str]]:
        """Every waiting (site, person), sorted, for the timer to evaluate itself."""
        pairs = sorted((site, p) for site, persons in self._persons.items() for p in persons)
        self._persons.clear()
        return pairs
