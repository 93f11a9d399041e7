"""What the audience engine needs to know about a batch of events, read from its bytes in bulk.

The segmenter hands ClickHouse the Kafka values as one ``JSONEachRow`` body and never decodes an
event in Python. Audiences need two things from a batch besides its record keys: which event
types it holds (only the audiences those types can change are evaluated), and the few events
that carry identity (``user_id``, ``identify`` traits). Both come from substring searches over
the whole body (C loops over the bytes), not from a Python step per event; only the identity
lines are parsed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

#: Bytes that mark an event worth parsing for identity (canonical events are compact JSON).
IDENTITY_MARKERS = (b'"user_id":"', b'"type":"identify"')


@dataclass(frozen=True, slots=True)
class BatchDigest:
    """``probed``: the event types looked for (``None``: none, every type may be there);
    ``types``: those of them the batch holds; ``identity``: the lines carrying identity or
    traits, as they are."""

    probed: frozenset[str] | None
    types: frozenset[str]
    identity: tuple[bytes, ...]

    def may_hold(self, types: Iterable[str]) -> bool:
        """Whether the batch may hold an event of one of ``types`` (a type not looked for
        counts as there)."""
        wanted = frozenset(types)
        if self.probed is None or not wanted <= self.probed:
            return True
        return not wanted.isdisjoint(self.types)


def identity_lines(body: bytes) -> tuple[bytes, ...]:
    """The lines of ``body`` that carry an identity marker, each once, in order."""
    spans: set[tuple[int, int]] = set()
    find = _finder(body)
    for marker in IDENTITY_MARKERS:
        pos = find(marker, 0)
        while pos >= 0:
            start = body.rfind(b"\n", 0, pos) + 1
            end = body.find(b"\n", pos)
            if end < 0:
                end = len(body)
            spans.add((start, end))
            pos = find(marker, end)
    return tuple(body[s:e] for s, e in sorted(spans))


def _load_memmem() -> Callable[..., int | None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        memmem = libc.memmem
    except (OSError, AttributeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return cast("Callable[..., int | None]", memmem)


_MEMMEM = _load_memmem()


def _finder(body: bytes) -> Callable[[bytes, int], int]:
    """``find(needle, start)`` over ``body`` like ``bytes.find``: with the C library's
    ``memmem`` where there is one (vectorised; two to three times faster on event bodies than
    ``bytes.find``, whose needles starting with a quote keep hitting JSON's quotes)."""
    memmem = _MEMMEM
    if memmem is None or not body:
        return body.find
    pointer = ctypes.c_char_p(body)  # the bytes' own buffer, no copy; kept alive here
    base = ctypes.cast(pointer, ctypes.c_void_p).value or 0
    size = len(body)

    def find(needle: bytes, start: int) -> int:
        if start >= size:
            return -1
        found = memmem(base + start, size - start, needle, len(needle))
        _ = pointer
        return -1 if not found else found - base

    return find


def digest(body: bytes, wanted: Iterable[str] | None) -> BatchDigest:
    """The digest of a ``JSONEachRow`` body: which of the ``wanted`` types it holds (``None``:
    do not look, every type counts as there), and its identity lines.

    A type is there if a ``"type":"<t>"`` pair is anywhere in a line, so an object nested in
    ``properties`` with such a key counts too: the answer may say yes for a type no event has
    (an audience is then evaluated for nothing), never no for one it has. Each search stops at
    the first match, so the types a busy batch holds cost almost nothing; one it does not hold
    costs a scan of the body."""
    if wanted is None:
        return BatchDigest(None, frozenset(), identity_lines(body))
    probed = frozenset(wanted)
    find = _finder(body)
    types = frozenset(t for t in probed if find(f'"type":"{t}"'.encode(), 0) >= 0)
    return BatchDigest(probed, types, identity_lines(body))


def merge(digests: Iterable[BatchDigest]) -> BatchDigest:
    """Several digests as one: the types any holds, of those all looked for."""
    probed: frozenset[str] | None = None
    types: set[str] = set()
    identity: list[bytes] = []
    first = True
    for d in digests:
        if d.probed is None:
            probed, first = None, False
        elif first:
            probed, first = d.probed, False
        elif probed is not None:
            probed &= d.probed
        types |= d.types
        identity.extend(d.identity)
    return BatchDigest(probed, frozenset(types), tuple(identity))
