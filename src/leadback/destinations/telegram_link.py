"""Linking a Telegram chat to a visitor, and the secret of a bot's webhook.

A visitor opens ``https://t.me/<bot>?start=<token>``; Telegram shows the bot, and pressing Start
sends the bot ``/start <token>``, which reaches ingest's webhook with the chat. The token is the
visitor id (16 bytes) signed for the purpose ``"telegram"`` (:mod:`leadback.signed_tokens`):
38 characters of ``[A-Za-z0-9_-]``, inside the 64 Telegram allows for a start parameter. It
carries no expiry and no site: it is a bearer link, shown only to the holder of the visitor
cookie, and whoever presses Start with it receives that visitor's messages on that bot.

The webhook secret (Telegram's ``X-Telegram-Bot-Api-Secret-Token``, 1-256 characters of
``[A-Za-z0-9_-]``) is derived, not configured, so ingest can check it without reading
destination definitions: a SHA-256 of ``"<site_id>/<destination_id>"`` (first 16 bytes) signed
for the purpose ``"telegram-webhook"`` with the dispatcher's token key. The dispatcher registers
it with ``setWebhook`` (``TelegramChannel.set_webhook``) for the URL
:func:`telegram_webhook_path` names; ingest accepts it as long as the key that made it is one of
``LEADBACK_DISPATCHER_TOKEN_KEYS`` (so a key rotation does not cut the webhook off before the
dispatcher registers the new secret).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final
from urllib.parse import quote

from leadback.errors import InvalidInputError
from leadback.ids import is_visitor_id
from leadback.signed_tokens import TokenSigner

BOT_USERNAME: Final = r"^[A-Za-z][A-Za-z0-9_]{1,28}[Bb][Oo][Tt]$"
"""A bot's username: 5-32 characters of ``[A-Za-z0-9_]``, a letter first, ending in "bot"."""

START_PURPOSE: Final = "telegram"
WEBHOOK_PURPOSE: Final = "telegram-webhook"
MAX_START_PARAMETER: Final = 64
_START_PARAMETER: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BOT_USERNAME: Final = re.compile(BOT_USERNAME)
VISITOR_ID_BYTES: Final = 16


def _invalid_token() -> InvalidInputError:
    return InvalidInputError("invalid_token", "the link is not valid")


def telegram_start_token(signer: TokenSigner, visitor_id: str) -> str:
    """The ``/start`` parameter that links a chat to ``visitor_id`` (32 lower-case hex digits)."""
    if len(visitor_id) != 2 * VISITOR_ID_BYTES or not is_visitor_id(visitor_id):
        raise InvalidInputError("invalid_visitor_id", "a visitor id is 32 lower-case hex digits")
    return signer.sign(START_PURPOSE, bytes.fromhex(visitor_id))


def telegram_visitor_id(signer: TokenSigner, token: str) -> str:
    """The visitor id a start token was made for; ``InvalidInputError("invalid_token")``
    for anything else."""
    if not _START_PARAMETER.fullmatch(token):
        raise _invalid_token()
    payload = signer.verify(START_PURPOSE, token)
    if len(payload) != VISITOR_ID_BYTES:
        raise _invalid_token()
    return payload.hex()


def is_bot_username(name: str) -> bool:
    """Whether ``name`` is a Telegram bot username (5-32 characters, ends in "bot")."""
    return bool(_BOT_USERNAME.fullmatch(name))


def telegram_deep_link(bot_username: str, token: str) -> str:
    """``https://t.me/<bot>?start=<token>``: opens the bot; Start sends ``/start <token>``."""
    if not is_bot_username(bot_username):
        raise InvalidInputError("invalid_bot", "not a Telegram bot username")
    if not _START_PARAMETER.fullmatch(token):
        raise InvalidInputError("invalid_token", "not a Telegram start parameter")
    return f"https://t.me/{bot_username}?start={token}"


def _webhook_payload(site_id: str, destination_id: str) -> bytes:
    return hashlib.sha256(f"{site_id}/{destination_id}".encode()).digest()[:16]


def telegram_webhook_secret(signer: TokenSigner, site_id: str, destination_id: str) -> str:
    """The ``secret_token`` to give ``setWebhook`` for this site's bot (38 characters)."""
    return signer.sign(WEBHOOK_PURPOSE, _webhook_payload(site_id, destination_id))


def telegram_webhook_secret_ok(
    signer: TokenSigner, site_id: str, destination_id: str, secret: str | None
) -> bool:
    """Whether ``secret`` (the request's header) is this webhook's, made with any known key."""
    if not secret:
        return False
    try:
        payload = signer.verify(WEBHOOK_PURPOSE, secret)
    except InvalidInputError:
        return False
    return hmac.compare_digest(payload, _webhook_payload(site_id, destination_id))


def telegram_webhook_path(site_id: str, destination_id: str) -> str:
    """Ingest's path for this site's bot webhook (prefix it with the public URL)."""
    return f"/v1/telegram/{quote(site_id, safe='')}/{destination_id}/webhook"


def telegram_link_endpoint(public_url: str, destination_id: str, bot_username: str) -> str:
    """Ingest's URL that sends a visitor on to their deep link (a button on the site)."""
    if not is_bot_username(bot_username):
        raise InvalidInputError("invalid_bot", "not a Telegram bot username")
    base = public_url.rstrip("/")
    return f"{base}/v1/telegram/{destination_id}/link?bot={bot_username}&redirect=1"
