"""The ``leadback`` command."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

import orjson
import typer

from leadback.errors import ConfigError, LeadbackError
from leadback.logs import configure_logging
from leadback.settings import Settings, load_settings

app = typer.Typer(
    help="Leadback: pixel ingest, live audiences, destinations.",
    no_args_is_help=True,
    add_completion=False,
)
events_app = typer.Typer(help="Look at the event topics.", no_args_is_help=True)
app.add_typer(events_app, name="events")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


@app.command()
def up() -> None:
    """Start the whole embedded stack: broker, chDB, ingest and segmenter. Ctrl-C stops it."""
    from leadback.supervisor import run_up

    os.environ.setdefault("LEADBACK_LOG_JSON", "false")
    settings = _settings()
    try:
        code = run_up(settings, announce=lambda text: typer.echo(text, err=False))
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


@app.command()
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
    settings = _settings()
    try:
        serve(settings)
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def segmenter() -> None:
    """Run one segmenter process (a member of the consumer group)."""
    from leadback.segmenter.service import run_segmenter

    settings = _settings()
    try:
        asyncio.run(run_segmenter(settings))
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def sql(query: Annotated[str, typer.Argument(help="a ClickHouse query")]) -> None:
    """Run a query on Leadback's ClickHouse (with chDB: while the stack is stopped, since one
    process owns the data directory). Prints tab-separated rows."""
    from leadback.store.client import ClickHouseStore

    settings = _settings()

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


@events_app.command("tail")
def events_tail(
    invalid: Annotated[bool, typer.Option("--invalid", help="follow the invalid topic")] = False,
    changes: Annotated[
        bool, typer.Option("--changes", help="follow the audience change topic")
    ] = False,
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest record")] = False,
    count: Annotated[int, typer.Option("-n", "--count", help="stop after N records")] = 0,
    pretty: Annotated[bool, typer.Option(help="indent the JSON")] = False,
) -> None:
    """Print records of the events topic (or the invalid or change topic) as JSON lines."""
    from leadback.kafka.tail import tail

    settings = _settings()
    topic = settings.kafka.topic_events
    if invalid:
        topic = settings.kafka.topic_invalid
    elif changes:
        topic = settings.kafka.topic_changes

    def show(key: bytes | None, value: bytes) -> None:
        if pretty:
            value = orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2)
        sys.stdout.write(value.decode("utf-8", "replace") + "\n")
        sys.stdout.flush()

    try:
        asyncio.run(tail(settings, topic, show, from_beginning=from_beginning, count=count))
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def main() -> None:
    """Console-script entry point."""
    app()
