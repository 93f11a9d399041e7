"""What an audience compiles to, for people: the admin API's
``GET /v1/sites/{site}/audiences/{audience_id}/explain`` and ``leadback audiences explain``."""

from __future__ import annotations

from leadback.audiences.compiler import compile_rule
from leadback.audiences.query import VersionedAudience, build_evaluation
from leadback.audiences.rules import AudienceSpec


def explain_audience(
    db: str, spec: AudienceSpec, version: int, site_audiences: dict[str, AudienceSpec]
) -> dict[str, str]:
    """The SQL ``spec`` compiles to: its rule expression over signal columns, the signals (one
    line each: column, what it keeps, the event test), the statement that finds who qualifies
    among a batch's visitors, and the one that reads their memberships. ``site_audiences``
    resolve ``in_audience``."""
    rule = compile_rule(spec, site_audiences)
    query = build_evaluation(
        db, [VersionedAudience(spec, version)], site_audiences, incremental=True
    )
    signals = "\n".join(
        f"{sig.column}: {'times' if sig.times else 'latest time'}"
        f"{f' per product ({sig.product_key})' if sig.product_key else ''} of {sig.predicate}"
        for sig in sorted(rule.signals, key=lambda sig: sig.column)
    )
    return {
        "rule": rule.expression,
        "signals": signals,
        "members": query.members,
        "previous": query.previous,
    }
