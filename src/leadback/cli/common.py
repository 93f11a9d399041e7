"""What every ``leadback`` command shares: settings (or a clear exit), one-line errors, and
for the admin API's clients: the ``--url``/``--token`` options, reading a document, tables."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from leadback.errors import ConfigError, InvalidInputError, LeadbackError
from leadback.logs import configure_logging
from leadback.settings import Settings, load_settings

if TYPE_CHECKING:
    from leadback.admin.client import AdminClient

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="LEADBACK_ADMIN_URL",
        help="admin API base URL (default: http://<admin.host>:<admin.port> of the settings)",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="LEADBACK_ADMIN_TOKEN",
        help="bearer token (default: the first of LEADBACK_ADMIN_TOKENS, or the generated one)",
        show_default=False,
    ),
]


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


@contextlib.contextmanager
def offline_errors() -> Iterator[None]:
    """Like :func:`one_line_errors`, with bad input named where the API's error names it:
    ``error: <reason> at <field>: <detail>``."""
    with one_line_errors():
        try:
            yield
        except InvalidInputError as exc:
            where = f" at {exc.field}" if exc.field else ""
            detail = f": {exc.detail}" if exc.detail else ""
            typer.echo(f"error: {exc.reason}{where}{detail}", err=True)
            raise typer.Exit(1) from exc


def admin_client(url: str | None, token: str | None) -> AdminClient:
    """A client of the admin API at ``url`` (default: from the settings) with ``token``
    (default: the first configured, or the generated one); exit 1 if there is none."""
    from leadback.admin.client import AdminClient

    if url is None or token is None:
        settings = settings_or_exit()
        if url is None:
            if not settings.admin.port:
                typer.echo("error: the admin API is off (admin.port = 0); give --url", err=True)
                raise typer.Exit(1)
            host = settings.admin.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            url = f"http://{host}:{settings.admin.port}"
        if token is None:
            from leadback.admin.tokens import admin_tokens

            try:
                token = admin_tokens(settings)[0]
            except ConfigError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
    return AdminClient(url, token)


def read_document(path: str) -> Any:
    """A YAML or JSON file (``-``: stdin); exit 1 naming the file if it cannot be read."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return yaml.safe_load(text)  # JSON is YAML too
    except OSError as exc:
        typer.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from exc
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        typer.echo(f"error: {path} is not valid YAML or JSON: {problem}", err=True)
        raise typer.Exit(1) from exc


def echo_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, two spaces apart."""
    table = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
