"""Consent: the one rule that decides what a request allows, for every protocol.

A protocol reads its own wire format into :class:`ConsentSignals` (what the client said);
:func:`decide_consent` turns the signals, the site's default and the deployment's DNT setting
into the event's ``consent`` record. The rule:

* ``status``: the one sent, else the site's default;
* ``purposes``: the ones sent, else ``["all"]`` when granted and ``[]`` when denied;
* ``gpc`` and ``dnt`` are recorded as sent; they do not change ``status``;
* ``tracking`` (whether a persistent visitor id may be used) is granted status, no GPC, and
  no DNT when the deployment honours it.

Query-string protocols (the pixel) send consent as text: :func:`signals_from_query` reads it.
``consent`` parameter (case-insensitive, surrounding spaces ignored):

* ``granted``, ``1``, ``yes``, ``true``, ``all`` -> granted, purposes ``["all"]``
* ``denied``, ``0``, ``no``, ``false``, ``none`` -> denied, purposes ``[]``
* otherwise a comma-separated list of purpose names (each ``[a-z0-9_]{1,64}``, at most 32,
  duplicates dropped) -> granted for those purposes; a malformed list raises
  ``InvalidInputError("invalid_consent")``
* absent or empty -> the site's default

``gpc`` is set by ``Sec-GPC: 1`` or ``gpc=1``, ``dnt`` by ``DNT: 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from leadback.errors import InvalidInputError
from leadback.events import MAX_PURPOSE, MAX_PURPOSES, Consent

ConsentStatus = Literal["granted", "denied"]

_GRANTED: Final = frozenset({"granted", "1", "yes", "true", "all"})
_DENIED: Final = frozenset({"denied", "0", "no", "false", "none"})
_PURPOSE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass(frozen=True, slots=True)
class ConsentSignals:
    """What a client said about consent, in no protocol's terms (None: said nothing)."""

    status: ConsentStatus | None = None
    purposes: list[str] | None = None
    gpc: bool = False  # Global Privacy Control
    dnt: bool = False  # Do Not Track


#: A request that carries no consent signal at all (most of them).
NO_SIGNALS: Final = ConsentSignals()


def decide_consent(signals: ConsentSignals, *, default: ConsentStatus, honor_dnt: bool) -> Consent:
    """The consent record of one event (see the module docstring for the rule)."""
    status = signals.status or default
    purposes = signals.purposes
    if purposes is None:
        purposes = ["all"] if status == "granted" else []
    return {
        "status": status,
        "purposes": purposes,
        "gpc": signals.gpc,
        "dnt": signals.dnt,
        "tracking": status == "granted" and not signals.gpc and not (signals.dnt and honor_dnt),
    }


def signals_from_query(
    param: str | None,
    *,
    gpc_header: str | None,
    dnt_header: str | None,
    gpc_param: str | None = None,
) -> ConsentSignals:
    """The signals of a query-string request: its ``consent`` and ``gpc`` parameters and its
    ``Sec-GPC`` and ``DNT`` headers. Raises ``InvalidInputError("invalid_consent")``."""
    if not param and gpc_header is None and dnt_header is None and not gpc_param:
        return NO_SIGNALS
    status: ConsentStatus | None = None
    purposes: list[str] | None = None
    value = param.strip() if param else ""
    if not value.isascii():
        raise InvalidInputError("invalid_consent", "not ASCII", field="consent")
    value = value.lower()
    if not value:
        pass
    elif value in _GRANTED:
        status = "granted"
    elif value in _DENIED:
        status = "denied"
    else:
        status, purposes = "granted", _purposes(value)
    return ConsentSignals(
        status=status,
        purposes=purposes,
        gpc=_flag(gpc_header) or _flag(gpc_param),
        dnt=_flag(dnt_header),
    )


def _purposes(value: str) -> list[str]:
    purposes: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item or len(item) > MAX_PURPOSE or not _PURPOSE_CHARS.issuperset(item):
            raise InvalidInputError(
                "invalid_consent",
                f"purpose names are 1-{MAX_PURPOSE} of [a-z0-9_], comma-separated",
                field="consent",
            )
        if item not in purposes:
            purposes.append(item)
    if len(purposes) > MAX_PURPOSES:
        raise InvalidInputError(
            "invalid_consent", f"at most {MAX_PURPOSES} purposes", field="consent"
        )
    return purposes


def _flag(value: str | None) -> bool:
    return value is not None and value.strip() == "1"
