"""``leadback events tail``: follow a topic as JSON lines."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import orjson
import typer

from leadback.cli.common import settings_or_exit
from leadback.errors import LeadbackError

events_app = typer.Typer(help="Look at the event topics.", no_args_is_help=True)


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

    settings = settings_or_exit()
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


_IMPORT_HELP = (
    "Import past events onto the events topic, with their own event time.\n\n"
    "Each line is an event in the JSON API's shape (with site_id and timestamp) or a Segment "
    "message (track, page, screen, identify, alias, group). Lines are validated like the JSON "
    "API's events; the accepted ones are stored by the segmenter like any other. Exit 1 if a "
    "line was rejected (unless --skip-invalid) or the broker failed."
)


@events_app.command("import", help=_IMPORT_HELP)
def events_import(
    file: Annotated[str, typer.Argument(help="JSON lines (.gz too); - reads standard input")],
    site: Annotated[
        str | None, typer.Option(help="site of the lines without site_id (every Segment line)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate every line, produce nothing")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="events produced, then acknowledged, at once")
    ] = 1000,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="exit 0 even if some lines were rejected")
    ] = False,
) -> None:
    """``leadback events import`` (help: :data:`_IMPORT_HELP`)."""
    from leadback.cli.import_progress import import_events

    settings = settings_or_exit()
    code = import_events(
        settings,
        file,
        site=site,
        dry_run=dry_run,
        batch_size=batch_size,
        skip_invalid=skip_invalid,
    )
    raise typer.Exit(code)
