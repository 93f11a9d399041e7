"""A campaigns document (``campaigns.yaml``, ``POST /campaigns:apply``) and its validation.

``{destinations: [...], policies: [...], campaigns: [...]}``, every part optional. The whole
document is checked before anything is written; errors name the field as the document gave
it (``campaigns[0].steps[1].destination``). A campaign's destination must be in the document
or stored; its audience must be stored (apply audiences first); its site configured. Each
step's templates must compile and give the fields its channel needs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from leadback.campaigns.definitions import CampaignSpec, SitePolicy, Step
from leadback.campaigns.templates import check_data_templates, check_template
from leadback.destinations.config import DestinationConfig
from leadback.destinations.registry import channel_kind, parse_destination
from leadback.errors import InvalidInputError

#: Template fields each channel needs in a step.
REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "email": ("subject", "text"),
    "sms": ("text",),
    "telegram": ("text",),
    "webpush": ("subject", "text"),
    "webhook": (),
}


@dataclass(frozen=True)
class CampaignDocument:
    """What a document holds, in its order."""

    destinations: list[DestinationConfig] = field(default_factory=list)
    policies: list[SitePolicy] = field(default_factory=list)
    campaigns: list[CampaignSpec] = field(default_factory=list)


def _model_error(exc: ValidationError, prefix: str, reason: str) -> InvalidInputError:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return InvalidInputError(reason, first["msg"], field=f"{prefix}.{where}" if where else prefix)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise InvalidInputError("invalid_document", f"{key} must be a list", field=key)
    return value


def parse_document(data: Any) -> CampaignDocument:
    """Parse a document; ``InvalidInputError`` names the first bad field."""
    if not isinstance(data, dict):
        raise InvalidInputError(
            "invalid_document",
            "a campaigns document is a mapping of destinations, policies and campaigns",
        )
    unknown = sorted(set(data) - {"destinations", "policies", "campaigns"})
    if unknown:
        raise InvalidInputError(
            "invalid_document", f"unknown section {unknown[0]!r}", field=unknown[0]
        )
    destinations = [
        parse_destination(d, field=f"destinations[{i}]")
        for i, d in enumerate(_list(data, "destinations"))
    ]
    policies: list[SitePolicy] = []
    for i, p in enumerate(_list(data, "policies")):
        try:
            policies.append(SitePolicy.model_validate(p))
        except ValidationError as exc:
            raise _model_error(exc, f"policies[{i}]", "invalid_policy") from None
    campaigns: list[CampaignSpec] = []
    for i, c in enumerate(_list(data, "campaigns")):
        try:
            campaigns.append(CampaignSpec.model_validate(c))
        except ValidationError as exc:
            raise _model_error(exc, f"campaigns[{i}]", "invalid_campaign") from None
    _unique([d.id for d in destinations], "destinations", "id")
    _unique([p.site for p in policies], "policies", "site")
    _unique([f"{c.site}/{c.id}" for c in campaigns], "campaigns", "id")
    return CampaignDocument(destinations, policies, campaigns)


def _unique(keys: list[str], section: str, key: str) -> None:
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k in seen:
            raise InvalidInputError(
                "duplicate", f"{k!r} appears twice", field=f"{section}[{i}].{key}"
            )
        seen.add(k)


def check_step(step: Step, kind: str, *, field: str) -> None:
    """The step's templates compile and give what ``kind`` needs."""
    for name in REQUIRED_FIELDS.get(kind, ()):
        if not getattr(step, name):
            raise InvalidInputError(
                "invalid_campaign", f"a {kind} step needs {name}", field=f"{field}.{name}"
            )
    for name in ("subject", "text", "url"):
        source = getattr(step, name)
        if source is not None:
            check_template(source, html=False, field=f"{field}.{name}")
    if step.html is not None:
        if kind != "email":
            raise InvalidInputError(
                "invalid_campaign", "html is for e-mail steps", field=f"{field}.html"
            )
        check_template(step.html, html=True, field=f"{field}.html")
    if step.data is not None:
        check_data_templates(step.data, field=f"{field}.data")


def validate_document(
    doc: CampaignDocument,
    *,
    stored_destinations: Mapping[str, DestinationConfig],
    audiences: Collection[tuple[str, str]],
    sites: Collection[str] | None,
) -> None:
    """Check references across the document and the store (see the module docstring)."""
    destinations = {**stored_destinations, **{d.id: d for d in doc.destinations}}
    for i, p in enumerate(doc.policies):
        if sites is not None and p.site not in sites:
            raise InvalidInputError(
                "unknown_site", f"no site {p.site!r} is configured", field=f"policies[{i}].site"
            )
    for i, c in enumerate(doc.campaigns):
        where = f"campaigns[{i}]"
        if sites is not None and c.site not in sites:
            raise InvalidInputError(
                "unknown_site", f"no site {c.site!r} is configured", field=f"{where}.site"
            )
        if (c.site, c.audience) not in audiences:
            raise InvalidInputError(
                "unknown_audience",
                f"no audience {c.audience!r} on site {c.site!r} (apply audiences first)",
                field=f"{where}.audience",
            )
        for j, step in enumerate(c.steps):
            dest = destinations.get(step.destination)
            if dest is None:
                raise InvalidInputError(
                    "unknown_destination",
                    f"no destination {step.destination!r}",
                    field=f"{where}.steps[{j}].destination",
                )
            check_step(step, channel_kind(dest), field=f"{where}.steps[{j}]")
