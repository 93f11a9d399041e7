"""Web push subscriptions: ``POST`` and ``DELETE /v1/push/subscriptions``.

A site's page subscribes the browser (``PushManager.subscribe`` with the destination's
``vapid_public_key``) and sends the subscription here; ingest turns it into a
``leadback.push_subscribed`` signal (:mod:`leadback.ingest.signals`) carrying only
``endpoint_sha256`` and ``subscription_enc`` (the subscription encrypted with the contact
cipher): the endpoint is an address of the person and never travels in clear.

Two ways to say who the subscription belongs to:

* **the site's write key** (``Authorization: Bearer``, Basic or ``X-Write-Key``; a server
  relaying the subscription): the body names the person with ``anonymous_id`` or ``user_id``;
* **the visitor cookie** (a ``fetch`` with credentials from the site's page): the person is
  the cookie's visitor and the body names the ``site``. The body may not name a person then (a
  browser could claim anyone's ``user_id`` and receive their messages), and a request that the
  browser marks ``Sec-Fetch-Site: cross-site`` is refused: another site's page must not be able
  to subscribe or unsubscribe this visitor.

``DELETE`` (same two ways, the ``endpoint`` in the body) sends ``leadback.push_unsubscribed``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from leadback import events as ev
from leadback.destinations.push_subscription import (
    MAX_ENDPOINT_CHARS,
    endpoint_sha256,
    subscription_json,
    validate_subscription,
)
from leadback.errors import AuthError, InvalidInputError, LeadbackError
from leadback.ids import is_visitor_id
from leadback.ingest.context import Ctx, IngestContext, error_response, json_body_doc, read_body
from leadback.ingest.signals import SignalName, submit_signal
from leadback.ingest.sites import write_key_from_headers

router = APIRouter()
M = TypeVar("M", bound=BaseModel)

PATH: Final = "/v1/push/subscriptions"
MAX_BODY_BYTES: Final = 8192

IdStr = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]+$", min_length=1, max_length=ev.MAX_ID)
]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=ev.MAX_USER_ID)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Who(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str | None = Field(
        None, max_length=64, description="the site (required with the visitor cookie)"
    )
    anonymous_id: IdStr | None = Field(None, description="with the write key: the visitor")
    user_id: UserId | None = Field(None, description="with the write key: the known user")


class PushKeysIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    p256dh: Key = Field(description="the browser's P-256 public key, 65 bytes base64url")
    auth: Key = Field(description="the authentication secret, 16 bytes base64url")


class PushSubscriptionIn(BaseModel):
    """``PushSubscription.toJSON()`` as the browser gives it."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # browsers may add fields

    endpoint: str = Field(description=f"https URL, at most {MAX_ENDPOINT_CHARS} characters")
    keys: PushKeysIn
    # The browser's name and type (EpochTimeStamp, ms); the push service is the judge of expiry.
    expirationTime: float | None = Field(None, description="ignored")


class SubscribeIn(_Who):
    """``POST`` body."""

    subscription: PushSubscriptionIn


class UnsubscribeIn(_Who):
    """``DELETE`` body."""

    endpoint: str = Field(min_length=1, max_length=MAX_ENDPOINT_CHARS)


class SignalAccepted(BaseModel):
    """The signal is queued on the events topic."""

    event_id: str


class ErrorOut(BaseModel):
    """Why the request was refused; ``field`` names the part of the body at fault."""

    error: str
    detail: str
    field: str | None = None


_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    202: {"model": SignalAccepted, "description": "queued as a signal; its event id"},
    400: {"model": ErrorOut, "description": "bad JSON or a bad field (named in `field`)"},
    401: {
        "model": ErrorOut,
        "description": "no valid write key and no visitor cookie, or a cross-site cookie call",
    },
    413: {"model": ErrorOut, "description": f"the body is over {MAX_BODY_BYTES} bytes"},
    503: {"model": ErrorOut, "description": "local buffers are full; retry after Retry-After"},
}


@router.post(
    PATH,
    status_code=202,
    response_model=None,
    responses=_RESPONSES,
    openapi_extra=json_body_doc(SubscribeIn),
    summary="Save a browser's push subscription",
)
async def subscribe(
    request: Request,
    ctx: Ctx,
    authorization: Annotated[str | None, Header()] = None,
    x_write_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Record a web push subscription for a visitor (``leadback.push_subscribed``)."""
    try:
        key_site = _key_site(ctx, authorization, x_write_key, request)
        body = _parse(SubscribeIn, await read_body(request, MAX_BODY_BYTES))
        site_id, visitor_id = _owner(ctx, request, key_site, body)
        sub = body.subscription
        checked = validate_subscription(
            sub.endpoint,
            sub.keys.p256dh,
            sub.keys.auth,
            allow_private=ctx.settings.dispatcher.allow_private_targets,
            prefix="subscription.",
        )
        properties = {
            "endpoint_sha256": endpoint_sha256(checked.endpoint),
            "subscription_enc": ctx.cipher.encrypt(subscription_json(checked)),
        }
        return _submit(ctx, site_id, visitor_id, "leadback.push_subscribed", properties)
    except LeadbackError as exc:
        return _refuse(ctx, exc)


@router.delete(
    PATH,
    status_code=202,
    response_model=None,
    responses=_RESPONSES,
    openapi_extra=json_body_doc(UnsubscribeIn),
    summary="Forget a browser's push subscription",
)
async def unsubscribe(
    request: Request,
    ctx: Ctx,
    authorization: Annotated[str | None, Header()] = None,
    x_write_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Stop sending to a subscription (``leadback.push_unsubscribed``), named by its endpoint."""
    try:
        key_site = _key_site(ctx, authorization, x_write_key, request)
        body = _parse(UnsubscribeIn, await read_body(request, MAX_BODY_BYTES))
        site_id, visitor_id = _owner(ctx, request, key_site, body)
        properties = {"endpoint_sha256": endpoint_sha256(body.endpoint)}
        return _submit(ctx, site_id, visitor_id, "leadback.push_unsubscribed", properties)
    except LeadbackError as exc:
        return _refuse(ctx, exc)


def _key_site(
    ctx: IngestContext, authorization: str | None, x_write_key: str | None, request: Request
) -> str | None:
    """The write key's site; ``None`` for a cookie call. 401 before the body is read."""
    key = write_key_from_headers(authorization, x_write_key)
    if key is not None:
        return ctx.sites.site_for_key(key)
    visitor = request.cookies.get(ctx.settings.ingest.cookie_name)
    if not visitor or not is_visitor_id(visitor):
        raise AuthError("a write key or the visitor cookie is required")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise AuthError("the visitor cookie is not accepted from another site's page")
    return None


def _owner(
    ctx: IngestContext, request: Request, key_site: str | None, body: _Who
) -> tuple[str, str]:
    """``(site_id, visitor_id)`` the signal is keyed by (like the visitor's own events)."""
    if key_site is not None:
        if body.site is not None and body.site != key_site:
            raise InvalidInputError(
                "site_mismatch", "site is not the write key's site", field="site"
            )
        if body.anonymous_id is None and body.user_id is None:
            raise InvalidInputError(
                "missing_identity",
                "anonymous_id or user_id is required with a write key",
                field="anonymous_id",
            )
        return key_site, ev.visitor_id_for(body.anonymous_id, body.user_id, "")
    for name in ("anonymous_id", "user_id"):
        if getattr(body, name) is not None:
            raise InvalidInputError(
                "identity_needs_write_key",
                f"{name} may only be given with the write key; the cookie names the visitor",
                field=name,
            )
    if body.site is None:
        raise InvalidInputError("missing_site", "site is required with the cookie", field="site")
    if body.site not in ctx.sites.known:
        raise InvalidInputError("unknown_site", "site is not a known site", field="site")
    visitor = request.cookies[ctx.settings.ingest.cookie_name]  # checked by _key_site
    return body.site, visitor


def _parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        if error["type"] == "json_invalid":
            raise InvalidInputError("invalid_json", "the body is not JSON") from exc
        detail = f"{field}: {error['msg']}" if field else error["msg"]
        raise InvalidInputError("invalid_body", detail, field=field) from exc


def _submit(
    ctx: IngestContext,
    site_id: str,
    visitor_id: str,
    name: SignalName,
    properties: dict[str, Any],
) -> JSONResponse:
    event_id = submit_signal(
        ctx.delivery,
        ctx.settings.kafka.topic_events,
        site_id=site_id,
        visitor_id=visitor_id,
        name=name,
        properties=properties,
        now=ctx.clock.now(),
    )
    ctx.stats.requests[("push_subscriptions", 202)] += 1
    return JSONResponse({"event_id": event_id}, status_code=202)


def _refuse(ctx: IngestContext, exc: LeadbackError) -> JSONResponse:
    response = error_response(exc)
    ctx.stats.requests[("push_subscriptions", response.status_code)] += 1
    return response
