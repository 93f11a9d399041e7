"""The ``leadback`` command: services, topics, audiences, campaigns and erasure."""

from __future__ import annotations

import typer

from leadback.cli.audiences import audiences_app, erase
from leadback.cli.campaigns import campaigns_app
from leadback.cli.events import events_app
from leadback.cli.services import dispatcher, ingest, segmenter, sql, up

app = typer.Typer(
    help="Leadback: pixel ingest, live audiences, destinations.",
    no_args_is_help=True,
    add_completion=False,
)
for command in (up, ingest, segmenter, dispatcher, sql, erase):
    app.command()(command)
app.add_typer(events_app, name="events")
app.add_typer(audiences_app, name="audiences")
app.add_typer(campaigns_app, name="campaigns")


def main() -> None:
    """Console-script entry point."""
    app()
