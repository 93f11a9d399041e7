"""Checking a set of audience definitions together, before any of them is written.

One owner for the rule, whoever writes: the admin API (``audiences:apply``, ``audiences:validate``,
``PUT``), ``leadback audiences apply --offline`` and :meth:`AudienceRepository.put` all come
here. A set is checked as a whole against the stored definitions (a definition in the set
replaces the stored one of the same id): its sites are configured, every ``in_audience`` names a
person-level audience of the same site, in the set or stored, with no cycle, and an audience
that others refer to does not become product-level. The answer is an order to write them in
(an audience after those it refers to), so a file may list an audience before the one it
refers to; errors name the field as the document gave it (``rule.all[0].idle`` for a bare
audience, ``audiences[2].rule`` in a list).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from leadback.audiences.compiler import compile_rule
from leadback.audiences.rules import AudienceSpec, parse_audience, parse_audiences, references
from leadback.errors import InvalidInputError


@dataclass(frozen=True)
class AudienceSet:
    """Definitions to write together, in the order a document gave them."""

    specs: list[AudienceSpec]
    single: bool = False  # a bare audience, not a list: fields are named without audiences[i].

    def field(self, i: int, key: str) -> str:
        """Where the ``i``-th definition's ``key`` is in the document."""
        return key if self.single else f"audiences[{i}].{key}"


def parse_audience_set(data: Any) -> AudienceSet:
    """One audience (a mapping without ``audiences``), a list, or ``{audiences: [...]}``;
    ``InvalidInputError("invalid_audience")`` names the bad field."""
    if isinstance(data, dict) and "audiences" not in data:
        return AudienceSet([parse_audience(data)], single=True)
    return AudienceSet(parse_audiences(data))


def check_site(site: str, sites: Collection[str], *, field: str = "site") -> str:
    """``site`` if it is configured, else ``InvalidInputError("unknown_site")``."""
    if site not in sites:
        raise InvalidInputError("unknown_site", f"no site {site!r} is configured", field=field)
    return site


def validate_audience_set(
    audiences: AudienceSet, stored: Iterable[AudienceSpec], *, sites: Collection[str] | None
) -> list[AudienceSpec]:
    """Check ``audiences`` against each other and the ``stored`` definitions (of every site);
    return them in an order to write (each after the audiences of the set it refers to).

    ``sites``: the configured site ids (``None``: not checked here; the caller did). Raises
    ``InvalidInputError`` for the first problem found, naming its field.
    """
    specs = audiences.specs
    if sites is not None:
        for i, spec in enumerate(specs):
            check_site(spec.site, sites, field=audiences.field(i, "site"))
    by_site: dict[str, dict[str, AudienceSpec]] = {}
    for spec in stored:
        by_site.setdefault(spec.site, {})[spec.id] = spec
    for spec in specs:
        by_site.setdefault(spec.site, {})[spec.id] = spec
    for i, spec in enumerate(specs):
        others = {k: v for k, v in by_site[spec.site].items() if k != spec.id}
        try:
            compile_rule(spec, others)  # references exist, are person-level, make no cycle
        except InvalidInputError as exc:
            raise InvalidInputError(
                exc.reason, exc.detail, field=audiences.field(i, "rule")
            ) from exc
        users = sorted(o.id for o in others.values() if spec.id in references(o.rule))
        if spec.products is not None and users:
            raise InvalidInputError(
                "invalid_audience",
                f"{', '.join(users)} refer(s) to {spec.id!r}; it cannot become product-level",
                field=audiences.field(i, "products"),
            )
    ordered: list[AudienceSpec] = []
    pending = list(specs)
    while pending:  # compile_rule refused cycles, so every round places at least one
        waiting = {(s.site, s.id) for s in pending}
        ready = [s for s in pending if not {(s.site, r) for r in references(s.rule)} & waiting]
        ordered.extend(ready)
        pending = [s for s in pending if s not in ready]
    return ordered
