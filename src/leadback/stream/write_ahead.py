"""When the stream loop writes the next round's batches while the current round settles.

A round is a write (the segmenter: events into ClickHouse) followed by a settle (the audience
evaluation) and a commit. The next round's write does not depend on the current settle, so it
can run beside it, on a client of its own, and the next settle starts as soon as this one ends.
Written too early, the records arriving after the write wait for one more round; written too
late, the write is on the next round's path again. The moment aimed at is when the write would
end with the settle: the last rounds' durations predict both (an exponential average).
"""

from __future__ import annotations

_WEIGHT = 0.5  # of the newest duration in the average: rounds change size within seconds


class WriteAheadTimer:
    """Predicts settle and write durations from the ones observed."""

    def __init__(self) -> None:
        self._settle_s: float | None = None
        self._write_s: float | None = None

    def settled(self, seconds: float) -> None:
        """A settle took ``seconds``."""
        self._settle_s = _average(self._settle_s, seconds)

    def wrote(self, seconds: float) -> None:
        """A write took ``seconds``."""
        self._write_s = _average(self._write_s, seconds)

    def delay(self) -> float | None:
        """Seconds after a settle starts at which to write ahead; None before both durations
        were seen once (the first rounds write as they always did)."""
        if self._settle_s is None or self._write_s is None:
            return None
        return max(0.0, self._settle_s - self._write_s)


def _average(previous: float | None, seconds: float) -> float:
    if previous is None:
        return seconds
    return previous + _WEIGHT * (seconds - previous)
