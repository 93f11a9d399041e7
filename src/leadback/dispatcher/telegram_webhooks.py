"""Point each Telegram bot's updates at ingest (``setWebhook``), so visitors can link their chat
with ``/start <token>``. A bot has one webhook, so a Telegram destination serves one site: the
site of the campaigns that use it."""

from __future__ import annotations

from leadback.destinations.base import DestinationError
from leadback.destinations.telegram import TelegramChannel
from leadback.destinations.telegram_link import telegram_webhook_path, telegram_webhook_secret
from leadback.dispatcher.book import Book
from leadback.errors import ConfigError
from leadback.logs import get_logger
from leadback.signed_tokens import TokenSigner

log = get_logger(__name__)


async def register_telegram_webhooks(book: Book, signer: TokenSigner, public_url: str) -> int:
    """Call ``setWebhook`` for every Telegram destination used by one site's campaigns;
    returns how many were registered. Failures are logged (the next reload tries again)."""
    done = 0
    for destination in sorted(book.destinations):
        if book.channel_kind(destination) != "telegram":
            continue
        sites = book.sites_using(destination)
        if len(sites) != 1:
            if sites:
                log.error(
                    "a Telegram bot serves one site; its campaigns are on several",
                    destination=destination,
                    sites=sorted(sites),
                )
            continue
        site = next(iter(sites))
        try:
            channel = book.channel(destination)
            assert isinstance(channel, TelegramChannel)
            await channel.set_webhook(
                public_url.rstrip("/") + telegram_webhook_path(site, destination),
                telegram_webhook_secret(signer, site, destination),
            )
        except (ConfigError, DestinationError) as exc:
            log.warning("could not set a Telegram webhook", destination=destination, error=str(exc))
            continue
        done += 1
    return done
