"""The pixel's attribution fields: UTM parameters and click ids, from the pixel's own
parameters or, when absent, from the query string of its ``url`` (see
:mod:`leadback.protocols.pixel` for the contract)."""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus

from leadback import events as ev
from leadback.errors import InvalidInputError

_ATTRIBUTION_LIMITS: Final[dict[str, int]] = {
    **{f"utm_{field}": ev.MAX_UTM for field in ev.UTM_FIELDS},
    **dict.fromkeys(ev.CLICK_ID_FIELDS, ev.MAX_CLICK_ID),
}


def too_long(field: str, limit: int) -> InvalidInputError:
    """The refusal of a parameter over its limit."""
    return InvalidInputError("field_too_long", f"longer than {limit} characters", field=field)


_NO_UTM: Final[ev.Utm] = {
    "source": None,
    "medium": None,
    "campaign": None,
    "term": None,
    "content": None,
}
_NO_CLICK_IDS: Final[ev.ClickIds] = {
    "gclid": None,
    "fbclid": None,
    "yclid": None,
    "ttclid": None,
    "msclkid": None,
}


def attribution(params: dict[str, str], url: str | None) -> tuple[ev.Utm, ev.ClickIds]:
    """UTM and click ids: a parameter over its limit is refused, one from the URL is cut."""
    found: dict[str, str] = {}
    if not _ATTRIBUTION_LIMITS.keys().isdisjoint(params):
        for field, limit in _ATTRIBUTION_LIMITS.items():
            value = params.get(field)
            if value:
                if len(value) > limit:
                    raise too_long(field, limit)
                found[field] = value
    if url and len(found) < len(_ATTRIBUTION_LIMITS):
        url_query = url.partition("?")[2].partition("#")[0]
        # A cheap look before splitting ("msclkid" has no "clid").
        if "utm_" in url_query or "clid=" in url_query or "clkid=" in url_query:
            for part in url_query.split("&"):
                field, _, value = part.partition("=")
                cut = _ATTRIBUTION_LIMITS.get(field)
                if cut is not None and value and field not in found:
                    if "%" in value or "+" in value:
                        # The page's own URL: undecodable bytes are replaced, not refused.
                        value = unquote_plus(value)
                    found[field] = value[:cut]
    if not found:
        return _NO_UTM.copy(), _NO_CLICK_IDS.copy()
    get = found.get
    utm: ev.Utm = {
        "source": get("utm_source"),
        "medium": get("utm_medium"),
        "campaign": get("utm_campaign"),
        "term": get("utm_term"),
        "content": get("utm_content"),
    }
    click_ids: ev.ClickIds = {
        "gclid": get("gclid"),
        "fbclid": get("fbclid"),
        "yclid": get("yclid"),
        "ttclid": get("ttclid"),
        "msclkid": get("msclkid"),
    }
    return utm, click_ids
