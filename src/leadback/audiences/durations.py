"""Durations as audiences and campaigns write them: ``90s``, ``15m``, ``1h``, ``7d``, ``2w``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d{1,6})\s*(s|m|h|d|w)\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
MAX_DURATION_MS = 3 * 365 * 86_400_000


def parse_duration(value: object) -> int:
    """``"90s" | "15m" | "1h" | "7d" | "2w"`` (or a number of seconds) -> milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is like 30m, 1h, 7d")
    if isinstance(value, int | float):
        ms = int(value * 1000)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        ms = int(m.group(1)) * _UNIT_MS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration like 30m, 1h, 7d")
    if ms <= 0 or ms > MAX_DURATION_MS:
        raise ValueError("a duration is between 1s and 3 years")
    return ms


def format_duration(ms: int) -> str:
    """Milliseconds -> the shortest exact ``<n><unit>``."""
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms / 1000}s"
