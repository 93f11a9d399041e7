"""Fail points: named places where a test can make a real process crash on purpose.

``LEADBACK_FAILPOINTS="segmenter.after_write=kill"`` makes the process SIGKILL itself the
first time it reaches ``hit("segmenter.after_write")``. Unset (production), ``hit`` is one
dictionary lookup. Used by the crash tests; documented so operators can rehearse failures.
"""

from __future__ import annotations

import os
import signal

_ACTIONS: dict[str, str] | None = None


def _load() -> dict[str, str]:
    spec = os.environ.get("LEADBACK_FAILPOINTS", "")
    actions: dict[str, str] = {}
    for item in spec.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            actions[name] = action or "kill"
    return actions


def hit(name: str) -> None:
    """Act on the fail point ``name`` if it is armed."""
    global _ACTIONS  # noqa: PLW0603 - read the environment once
    if _ACTIONS is None:
        _ACTIONS = _load()
    action = _ACTIONS.get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
