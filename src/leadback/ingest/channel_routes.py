"""The routes channels need on ingest (unsubscribe, bounces, push subscriptions, Telegram),
each in its own module; ``build_api`` includes every router listed here."""

from __future__ import annotations

from fastapi import APIRouter

CHANNEL_ROUTERS: list[APIRouter] = []
