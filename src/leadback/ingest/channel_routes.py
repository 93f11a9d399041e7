"""The routes channels need on ingest (unsubscribe, bounces, push subscriptions, Telegram),
each in its own module; ``build_api`` includes every router listed here."""

from __future__ import annotations

from fastapi import APIRouter

from leadback.ingest import telegram_routes

CHANNEL_ROUTERS: list[APIRouter] = [telegram_routes.router]
