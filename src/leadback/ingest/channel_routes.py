"""The routes channels need on ingest (unsubscribe, bounces, push subscriptions, Telegram),
each in its own module; ``build_api`` includes every router listed here."""

from __future__ import annotations

from fastapi import APIRouter

from leadback.ingest import bounce_routes, push_routes, telegram_routes, unsubscribe_routes

CHANNEL_ROUTERS: list[APIRouter] = [
    unsubscribe_routes.router,
    bounce_routes.router,
    push_routes.router,
    telegram_routes.router,
]
