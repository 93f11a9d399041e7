"""The audience rule language: audiences are data (YAML or JSON), validated into typed models.

An audience::

    id: cart_abandoners          # [a-z0-9][a-z0-9_-]{0,63}, unique per site
    site: shop
    name: Cart abandoners
    ttl: 7d                      # optional: a membership ends this long after it began
    products: {property: product_id}   # optional: a product-level (dynamic) audience
    rule:
      all:
        - then_not:
            did: {event: add_to_cart, within: 7d}
            then: {event: purchase}
        - idle: 1h

A condition is an object with exactly one key naming its kind:

``did``        ``{event, name?, where?, count?, within?}``: events of that type (a list means any of
               them), matching every ``where`` filter, at least ``count.min`` (default 1) and at
               most ``count.max`` times in the last ``within`` (default: all history).
``then_not``   ``{did, then, within?}``: a ``did`` event with no ``then`` event after it (within
               ``within`` of it, once that much time has passed; without ``within``: ever since).
``sequence``   ``{steps: [match, ...], within?}``: the steps happened in this order, the whole
               sequence inside ``within``.
``idle``       duration: no event at all for at least that long.
``seen_within`` duration: some event in that time.
``in_audience`` audience id of the same site (person-level): its rule holds.
``all`` / ``any``  lists of conditions; ``not``: a condition.

A filter is ``{property: key, op, value}`` (``properties.key``; dots walk into objects) or
``{field: url|referrer|name|utm.source|..., op, value}``. Ops: ``eq ne gt gte lt lte in not_in
contains starts_with exists``. Durations are ``<n>s|m|h|d|w``.
In a product-level audience every condition is about one product's events at a time; a member
carries the products that qualify.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from leadback import events as ev
from leadback.audiences.durations import format_duration, parse_duration
from leadback.errors import InvalidInputError

AUDIENCE_ID = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
PropertyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")]
FieldName = Literal[
    "url",
    "referrer",
    "name",
    "utm.source",
    "utm.medium",
    "utm.campaign",
    "utm.term",
    "utm.content",
    "click_ids.gclid",
    "click_ids.fbclid",
    "click_ids.yclid",
    "click_ids.ttclid",
    "click_ids.msclkid",
    "context.language",
]
Scalar = str | float | bool


Duration = Annotated[int, Field(description="milliseconds; written 30m, 1h, 7d")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filter(_Model):
    """A test on one property (or field) of an event."""

    property: PropertyKey | None = None
    field: FieldName | None = None
    op: Literal[
        "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "starts_with", "exists"
    ] = "eq"
    value: Scalar | list[Scalar] | None = None

    @model_validator(mode="after")
    def _check(self) -> Filter:
        if (self.property is None) == (self.field is None):
            raise ValueError("give exactly one of `property` or `field`")
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"`{self.op}` needs a non-empty list as value")
        elif self.op == "exists":
            if self.value is not None:
                raise ValueError("`exists` takes no value")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"`{self.op}` needs one value (a string, number or boolean)")
        if self.op in ("gt", "gte", "lt", "lte") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError(f"`{self.op}` compares numbers; value must be a number")
        if (
            isinstance(self.value, float)
            and not math.isfinite(self.value)
            and self.op in ("eq", "ne", "gt", "gte", "lt", "lte")
        ):
            raise ValueError(f"`{self.op}` compares numbers; value must be a finite number")
        if self.op in ("contains", "starts_with") and not isinstance(self.value, str):
            raise ValueError(f"`{self.op}` needs a string value")
        return self


class Count(_Model):
    min: int = Field(1, ge=0, le=1_000_000)
    max: int | None = Field(None, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _bounds(self) -> Count:
        if self.max is not None and self.max < self.min:
            raise ValueError("count.max is below count.min")
        return self


def _durations(value: object) -> object:
    return None if value is None else parse_duration(value)


class EventMatch(_Model):
    """Which events: a type (or several), optionally a name and property filters."""

    event: list[ev.EventType] = Field(min_length=1, max_length=11)
    name: Annotated[str, StringConstraints(max_length=ev.MAX_NAME)] | None = None
    where: list[Filter] = Field(default_factory=list, max_length=32)

    @property
    def types(self) -> list[str]:
        return list(self.event)

    @field_validator("event", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class Did(EventMatch):
    """``did``: events matching, counted in a window."""

    count: Count = Count()
    within: Duration | None = None

    @field_validator("count", mode="before")
    @classmethod
    def _count_shorthand(cls, v: object) -> object:
        return {"min": v} if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: object) -> object:
        return _durations(v)


class ThenNot(_Model):
    did: Did
    then: EventMatch
    within: Duration | None = None

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: object) -> object:
        return _durations(v)


class Sequence(_Model):
    steps: list[EventMatch] = Field(min_length=2, max_length=8)
    within: Duration | None = None

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: object) -> object:
        return _durations(v)


class DidCond(_Model):
    did: Did


class ThenNotCond(_Model):
    then_not: ThenNot


class SequenceCond(_Model):
    sequence: Sequence


class IdleCond(_Model):
    idle: Duration

    @field_validator("idle", mode="before")
    @classmethod
    def _d(cls, v: object) -> object:
        return parse_duration(v)


class SeenWithinCond(_Model):
    seen_within: Duration

    @field_validator("seen_within", mode="before")
    @classmethod
    def _d(cls, v: object) -> object:
        return parse_duration(v)


class InAudienceCond(_Model):
    in_audience: Annotated[str, StringConstraints(pattern=AUDIENCE_ID)]


class AllCond(_Model):
    all: list[Condition] = Field(min_length=1, max_length=64)


class AnyCond(_Model):
    any: list[Condition] = Field(min_length=1, max_length=64)


class NotCond(_Model):
    not_: Condition = Field(alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


KINDS = ("did", "then_not", "sequence", "idle", "seen_within", "in_audience", "all", "any", "not")


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = [k for k in value if k in KINDS]
        return keys[0] if len(keys) == 1 and len(value) == 1 else None
    if isinstance(value, BaseModel):
        kinds: dict[type[BaseModel], str] = {
            DidCond: "did",
            ThenNotCond: "then_not",
            SequenceCond: "sequence",
            IdleCond: "idle",
            SeenWithinCond: "seen_within",
            InAudienceCond: "in_audience",
            AllCond: "all",
            AnyCond: "any",
            NotCond: "not",
        }
        return kinds.get(type(value))
    return None


Condition = Annotated[
    Annotated[DidCond, Tag("did")]
    | Annotated[ThenNotCond, Tag("then_not")]
    | Annotated[SequenceCond, Tag("sequence")]
    | Annotated[IdleCond, Tag("idle")]
    | Annotated[SeenWithinCond, Tag("seen_within")]
    | Annotated[InAudienceCond, Tag("in_audience")]
    | Annotated[AllCond, Tag("all")]
    | Annotated[AnyCond, Tag("any")]
    | Annotated[NotCond, Tag("not")],
    Discriminator(
        _kind,
        custom_error_type="condition_kind",
        custom_error_message="a condition is an object with exactly one of the keys "
        + ", ".join(KINDS),
    ),
]
AllCond.model_rebuild()
AnyCond.model_rebuild()
NotCond.model_rebuild()


class ProductScope(_Model):
    """Product-level audience: evaluate per product id found in ``properties.<property>`` or in
    ``properties.items[].<property>``."""

    property: PropertyKey = "product_id"


class AudienceSpec(_Model):
    """One audience definition as a user writes it."""

    id: Annotated[str, StringConstraints(pattern=AUDIENCE_ID)]
    site: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    ttl: Duration | None = None
    products: ProductScope | None = None
    rule: Condition

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: object) -> object:
        return _durations(v)

    def to_document(self) -> dict[str, Any]:
        """The definition as data, durations written back as ``7d``-style strings."""
        doc: dict[str, Any] = _durations_to_text(
            self.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        return doc


def _durations_to_text(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _durations_to_text(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_durations_to_text(v) for v in value]
    if key in ("within", "idle", "seen_within", "ttl") and isinstance(value, int):
        return format_duration(value)
    return value


def parse_audience(data: Any) -> AudienceSpec:
    """Validate one audience; ``InvalidInputError("invalid_audience")`` names the bad field."""
    try:
        return AudienceSpec.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def parse_audiences(data: Any) -> list[AudienceSpec]:
    """A document holding one audience, a list, or ``{audiences: [...]}``."""
    items = data.get("audiences", data) if isinstance(data, dict) else data
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise InvalidInputError("invalid_audience", "expected an audience or a list of them")
    specs: list[AudienceSpec] = []
    for i, item in enumerate(items):
        try:
            specs.append(AudienceSpec.model_validate(item))
        except ValidationError as exc:
            raise _invalid(exc, prefix=f"audiences[{i}]") from exc
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.site, spec.id) in seen:
            raise InvalidInputError("invalid_audience", f"audience {spec.id!r} appears twice")
        seen.add((spec.site, spec.id))
    return specs


def _invalid(exc: ValidationError, prefix: str = "") -> InvalidInputError:
    problems = []
    first_path = ""
    for err in exc.errors()[:5]:
        path = prefix
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part not in KINDS or not path.endswith(str(part)):
                path += f".{part}" if path else str(part)
        path = path.replace(".not_", ".not")
        first_path = first_path or path
        problems.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return InvalidInputError("invalid_audience", "; ".join(problems), field=first_path or None)


def references(cond: Condition) -> set[str]:
    """Audience ids a condition refers to through ``in_audience`` (directly)."""
    if isinstance(cond, InAudienceCond):
        return {cond.in_audience}
    found: set[str] = set()
    for child in children(cond):
        found |= references(child)
    return found


def children(cond: Condition) -> list[Condition]:
    """Direct sub-conditions of ``all``/``any``/``not``."""
    if isinstance(cond, AllCond):
        return list(cond.all)
    if isinstance(cond, AnyCond):
        return list(cond.any)
    if isinstance(cond, NotCond):
        return [cond.not_]
    return []
