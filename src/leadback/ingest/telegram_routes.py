"""Telegram on ingest: the deep link that starts a chat with a site's bot, and the bot's webhook
that turns ``/start <token>`` into a ``leadback.telegram_linked`` signal.

``GET /v1/telegram/{destination_id}/link?bot=<username>[&redirect=1]`` signs the visitor id of
the visitor cookie into a start token (:mod:`leadback.destinations.telegram_link`). Ingest does
not read destination definitions, so the bot's username comes in the ``bot`` query parameter
(checked as a bot username); only the token is signed, and a link to another bot can only link
the visitor's own chat with that bot, which ingest will never hear of.

``POST /v1/telegram/{site_id}/{destination_id}/webhook`` receives the bot's updates. The
``X-Telegram-Bot-Api-Secret-Token`` header must be this webhook's derived secret (401 if not).
Then every update is answered 200 at once, whatever it holds: Telegram redelivers an update
until it gets a 2xx, so a bad update is logged and dropped rather than answered with an error
it would retry for a day. The one exception is back-pressure (503 with ``Retry-After``): the
link would be lost, and Telegram's redelivery is then what saves it. What the webhook does:

* ``/start <token>`` in a private chat with a valid token: ``leadback.telegram_linked`` for the
  token's visitor, with ``destination_id`` and ``chat_enc`` (the chat id encrypted with the
  contact cipher; the chat id is never in clear on the topic or in a log).
* ``/stop`` and ``my_chat_member`` "kicked" (the user blocked the bot): dropped. Only the chat
  is known then, and ingest has no chat -> visitor table; the dispatcher learns it at the next
  send, which Telegram answers 403 (``RecipientGone("blocked")``).
* anything else: dropped.

The answer's body is empty: Telegram reads a JSON body as a Bot API call to make.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from leadback.destinations.telegram_link import (
    is_bot_username,
    telegram_deep_link,
    telegram_start_token,
    telegram_visitor_id,
    telegram_webhook_secret_ok,
)
from leadback.errors import AuthError, BackpressureError, InvalidInputError
from leadback.ids import is_visitor_id
from leadback.ingest.context import Ctx, PayloadTooLarge, error_response, read_body
from leadback.ingest.pixel import cookie_value
from leadback.ingest.signals import submit_signal
from leadback.logs import get_logger
from leadback.signed_tokens import TokenSigner

log = get_logger(__name__)

router = APIRouter(tags=["telegram"])

MAX_UPDATE_BYTES: Final = 256 * 1024  # a message is <= 4096 characters; entities and media add
_DESTINATION_ID: Final = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")  # config.DestinationId
_NO_STORE: Final = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


class LinkBody(BaseModel):
    """The deep link for the visitor."""

    url: str


class ErrorBody(BaseModel):
    """What a refused request is told."""

    error: str
    detail: str


@router.get(
    "/v1/telegram/{destination_id}/link",
    response_model=LinkBody,
    responses={
        200: {"description": "the visitor's deep link to the bot (not cacheable)"},
        302: {"description": "with redirect=1: to the deep link (Location)"},
        400: {
            "model": ErrorBody,
            "description": "no visitor cookie (no_visitor), bot is not a bot username "
            "(invalid_bot) or destination_id is not an id (invalid_destination)",
        },
    },
)
async def telegram_link(
    request: Request, ctx: Ctx, destination_id: str, bot: str = "", redirect: bool = False
) -> Response:
    """The ``https://t.me/<bot>?start=<token>`` link that ties the visitor's chat with ``bot``
    to the visitor of the cookie. ``destination_id`` names the bot's destination (kept in the
    path for the caller's routing; the webhook knows it from its own path)."""
    try:
        if not _DESTINATION_ID.fullmatch(destination_id):
            raise InvalidInputError("invalid_destination", "not a destination id")
        if not is_bot_username(bot):
            raise InvalidInputError("invalid_bot", "bot must be a Telegram bot username")
        header = request.headers.get("cookie", "").encode("latin-1", "replace")
        visitor_id = cookie_value(header, ctx.settings.ingest.cookie_name.encode() + b"=")
        if visitor_id is None or not is_visitor_id(visitor_id):
            raise InvalidInputError("no_visitor", "no visitor cookie: load the site first")
        url = telegram_deep_link(bot, telegram_start_token(ctx.signer, visitor_id))
    except InvalidInputError as exc:
        ctx.stats.requests[("telegram_link", 400)] += 1
        return error_response(exc)
    if redirect:
        ctx.stats.requests[("telegram_link", 302)] += 1
        return RedirectResponse(url, status_code=302, headers=_NO_STORE)
    ctx.stats.requests[("telegram_link", 200)] += 1
    return JSONResponse({"url": url}, headers=_NO_STORE)


@dataclass(frozen=True, slots=True)
class Linked:
    """``/start <token>``: the chat belongs to the token's visitor."""

    visitor_id: str
    chat_id: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """An update that changes nothing; ``why`` is logged, ``bad`` ones counted as invalid."""

    why: str
    bad: bool = False


def _chat_id(chat: Any) -> int | None:
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    return chat_id if isinstance(chat_id, int) and not isinstance(chat_id, bool) else None


def read_update(update: Any, signer: TokenSigner) -> Linked | Dropped:
    """What one Telegram Update means for Leadback (see the module docstring)."""
    if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
        return Dropped("not_an_update", bad=True)
    message = update.get("message")
    if isinstance(message, dict):
        chat = message.get("chat")
        chat_id = _chat_id(chat)
        text = message.get("text")
        if chat_id is None or not isinstance(text, str):
            return Dropped("not_a_command")
        command, _, argument = text.strip().partition(" ")
        command = command.split("@", 1)[0]  # "/start@ShopBot" in a group
        if command == "/stop":
            return Dropped("stop_unknown_visitor")
        if command != "/start":
            return Dropped("not_a_command")
        if not isinstance(chat, dict) or chat.get("type") != "private":
            return Dropped("not_a_private_chat")
        if not argument.strip():
            return Dropped("start_without_token")
        try:
            visitor_id = telegram_visitor_id(signer, argument.strip())
        except InvalidInputError:
            return Dropped("invalid_token", bad=True)
        return Linked(visitor_id, chat_id)
    member = update.get("my_chat_member")
    if isinstance(member, dict):
        new = member.get("new_chat_member")
        if isinstance(new, dict) and new.get("status") == "kicked":
            return Dropped("blocked_unknown_visitor")
        return Dropped("member_update")
    return Dropped("other_update")


@router.post(
    "/v1/telegram/{site_id}/{destination_id}/webhook",
    status_code=200,
    response_class=Response,
    responses={
        200: {"description": "taken or dropped (empty body: Telegram would read JSON as a call)"},
        401: {"model": ErrorBody, "description": "X-Telegram-Bot-Api-Secret-Token is wrong"},
        503: {
            "model": ErrorBody,
            "description": "local buffers full; Telegram redelivers (see Retry-After)",
        },
    },
)
async def telegram_webhook(
    request: Request,
    ctx: Ctx,
    site_id: str,
    destination_id: str,
    x_telegram_bot_api_secret_token: Annotated[str | None, Header()] = None,
) -> Response:
    """One Telegram Update for the bot of ``destination_id`` on ``site_id``."""
    route = "telegram_webhook"
    if not telegram_webhook_secret_ok(
        ctx.signer, site_id, destination_id, x_telegram_bot_api_secret_token
    ):
        ctx.stats.requests[(route, 401)] += 1
        return error_response(AuthError("wrong or missing X-Telegram-Bot-Api-Secret-Token"))
    try:
        update = orjson.loads(await read_body(request, MAX_UPDATE_BYTES))
        outcome = read_update(update, ctx.signer)
    except (PayloadTooLarge, orjson.JSONDecodeError):
        update, outcome = None, Dropped("unreadable", bad=True)
    if isinstance(outcome, Linked) and site_id not in ctx.sites.known:
        outcome = Dropped("unknown_site", bad=True)
    update_id = update.get("update_id") if isinstance(update, dict) else None
    if isinstance(outcome, Dropped):
        if outcome.bad:
            ctx.stats.invalid[f"telegram_{outcome.why}"] += 1
        log.info(
            "telegram update dropped",
            why=outcome.why,
            site_id=site_id,
            destination_id=destination_id,
            update_id=update_id,
        )
        ctx.stats.requests[(route, 200)] += 1
        return Response(status_code=200)
    try:
        submit_signal(
            ctx.delivery,
            ctx.settings.kafka.topic_events,
            site_id=site_id,
            visitor_id=outcome.visitor_id,
            name="leadback.telegram_linked",
            properties={
                "destination_id": destination_id,
                "chat_enc": ctx.cipher.encrypt(str(outcome.chat_id)),
            },
            now=ctx.clock.now(),
        )
    except BackpressureError as exc:
        ctx.stats.requests[(route, 503)] += 1
        return error_response(exc)
    ctx.stats.accepted["telegram"] += 1
    ctx.stats.requests[(route, 200)] += 1
    log.info("telegram chat linked", site_id=site_id, destination_id=destination_id)
    return Response(status_code=200)
