"""``leadback up``, ``ingest``, ``segmenter``, ``dispatcher``, ``sql``: run the services, query
the store."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer

from leadback.cli.common import settings_or_exit
from leadback.errors import LeadbackError


def up() -> None:
    """Start the whole embedded stack: broker, chDB, ingest and segmenter. Ctrl-C stops it."""
    from leadback.supervisor import run_up

    os.environ.setdefault("LEADBACK_LOG_JSON", "false")
    settings = settings_or_exit()
    try:
        code = run_up(settings, announce=lambda text: typer.echo(text, err=False))
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


def ingest(
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Run the ingest service alone (scaled-out mode)."""
    from leadback.ingest.server import serve

    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"LEADBACK_INGEST_{name}"] = str(value)  # workers read the environment
    settings = settings_or_exit()
    try:
        serve(settings)
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def segmenter() -> None:
    """Run one segmenter process (a member of the consumer group)."""
    from leadback.segmenter.service import run_segmenter

    settings = settings_or_exit()
    try:
        asyncio.run(run_segmenter(settings))
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def dispatcher() -> None:
    """Run one dispatcher process (a member of its consumer group).

    For ClickHouse over HTTP; with chDB the dispatcher runs inside the segmenter's process.
    """
    from leadback.dispatcher.service import run_dispatcher

    settings = settings_or_exit()
    try:
        asyncio.run(run_dispatcher(settings))
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def sql(query: Annotated[str, typer.Argument(help="a ClickHouse query")]) -> None:
    """Run a query on Leadback's ClickHouse (with chDB: while the stack is stopped, since one
    process owns the data directory). Prints tab-separated rows."""
    from leadback.store.client import ClickHouseStore

    settings = settings_or_exit()

    async def run() -> None:
        store = ClickHouseStore(settings.clickhouse)
        try:
            await store.connect()
            for row in await store.query(query):
                typer.echo("\t".join(str(v) for v in row))
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
