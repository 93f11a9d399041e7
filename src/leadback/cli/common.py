"""What every ``leadback`` command shares: settings (or a clear exit), one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from leadback.errors import ConfigError, LeadbackError
from leadback.logs import configure_logging
from leadback.settings import Settings, load_settings


def settings_or_exit() -> Settings:
    """The settings, with logging configured; exit 2 with the reason if they are bad."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a Leadback error into ``error: ...`` on stderr and exit status 1."""
    try:
        yield
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
