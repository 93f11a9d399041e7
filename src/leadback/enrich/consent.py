"""Consent: what a pixel's ``consent``/``gpc`` parameters and the GPC/DNT headers allow.

``consent`` parameter (case-insensitive, surrounding spaces ignored):

* ``granted``, ``1``, ``yes``, ``true``, ``all`` -> granted, purposes ``["all"]``
* ``denied``, ``0``, ``no``, ``false``, ``none`` -> denied, purposes ``[]``
* otherwise a comma-separated list of purpose names (each ``[a-z0-9_]{1,64}``, at most 32,
  duplicates dropped) -> granted for those purposes; a malformed list raises
  ``InvalidInputError("invalid_consent")``
* absent or empty -> the site's default (purposes ``["all"]`` when granted, ``[]`` when denied)

``gpc`` is set by ``Sec-GPC: 1`` or ``gpc=1``, ``dnt`` by ``DNT: 1``. They do not change
``status`` (both are recorded as sent); they turn ``tracking`` off (DNT only when the
deployment honours it). ``tracking`` decides whether a persistent visitor id may be used.
"""

from __future__ import annotations

from typing import Final, Literal

from leadback.errors import InvalidInputError
from leadback.events import MAX_PURPOSE, MAX_PURPOSES, Consent

ConsentStatus = Literal["granted", "denied"]

_GRANTED: Final = frozenset({"granted", "1", "yes", "true", "all"})
_DENIED: Final = frozenset({"denied", "0", "no", "false", "none"})
_PURPOSE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


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


def decide_consent(
    *,
    param: str | None,
    gpc_header: str | None,
    dnt_header: str | None,
    default: ConsentStatus,
    honor_dnt: bool,
    gpc_param: str | None = None,
) -> Consent:
    """The consent record of one request (see the module docstring for the rules)."""
    if not param and gpc_header is None and dnt_header is None and not gpc_param:
        # Most requests carry no signal at all: the site's default, quickly.
        granted = default == "granted"
        return {
            "status": default,
            "purposes": ["all"] if granted else [],
            "gpc": False,
            "dnt": False,
            "tracking": granted,
        }
    value = param.strip() if param else ""
    if not value.isascii():
        raise InvalidInputError("invalid_consent", "not ASCII", field="consent")
    value = value.lower()
    status: ConsentStatus
    if not value:
        status = default
        purposes = ["all"] if default == "granted" else []
    elif value in _GRANTED:
        status, purposes = "granted", ["all"]
    elif value in _DENIED:
        status, purposes = "denied", []
    else:
        status, purposes = "granted", _purposes(value)
    gpc = _flag(gpc_header) or _flag(gpc_param)
    dnt = _flag(dnt_header)
    return {
        "status": status,
        "purposes": purposes,
        "gpc": gpc,
        "dnt": dnt,
        "tracking": status == "granted" and not gpc and not (dnt and honor_dnt),
    }
