"""The ``leadback`` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from leadback.errors import ConfigError, InvalidInputError, LeadbackError
from leadback.logs import configure_logging
from leadback.settings import Settings, load_settings

if TYPE_CHECKING:
    from leadback.admin.client import AdminClient
    from leadback.audiences.repository import Written

app = typer.Typer(
    help="Leadback: pixel ingest, live audiences, destinations.",
    no_args_is_help=True,
    add_completion=False,
)
events_app = typer.Typer(help="Look at the event topics.", no_args_is_help=True)
app.add_typer(events_app, name="events")
audiences_app = typer.Typer(
    help="Define audiences and look at their members, through the admin API.",
    no_args_is_help=True,
)
app.add_typer(audiences_app, name="audiences")


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


# -- audiences and erasure: clients of the admin API ------------------------------------------

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
SiteArg = Annotated[str, typer.Argument(help="site id")]
AudienceArg = Annotated[str, typer.Argument(help="audience id")]


def _admin_client(url: str | None, token: str | None) -> AdminClient:
    from leadback.admin.client import AdminClient

    if url is None or token is None:
        settings = _settings()
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


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except LeadbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _read_document(path: str) -> Any:
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


@audiences_app.command("apply")
def audiences_apply(
    file: Annotated[
        str,
        typer.Option(
            "-f",
            "--file",
            help="YAML or JSON: one audience, a list, or {audiences: [...]}; - for stdin",
        ),
    ],
    url: UrlOption = None,
    token: TokenOption = None,
    offline: Annotated[
        bool,
        typer.Option(
            help="write straight to ClickHouse (LEADBACK_CLICKHOUSE_URL) instead of the admin "
            "API, e.g. into a chDB directory before the segmenter starts"
        ),
    ] = False,
) -> None:
    """Create or update audiences. All are validated before any is written."""
    document = _read_document(file)
    if offline:
        settings = _settings()
        with _one_line_errors():
            try:
                written = asyncio.run(_apply_offline(settings, document))
            except InvalidInputError as exc:  # named where the API's error names it
                where = f" at {exc.field}" if exc.field else ""
                detail = f": {exc.detail}" if exc.detail else ""
                typer.echo(f"error: {exc.reason}{where}{detail}", err=True)
                raise typer.Exit(1) from exc
        for w in written:
            status = "written" if w.changed else "unchanged"
            typer.echo(
                f"{status} {w.stored.spec.site}/{w.stored.spec.id} (version {w.stored.version})"
            )
        return
    with _one_line_errors(), _admin_client(url, token) as client:
        for r in client.apply(document):
            typer.echo(f"{r['status']} {r['site']}/{r['id']} (version {r['version']})")


async def _apply_offline(settings: Settings, document: Any) -> list[Written]:
    """What ``POST /v1/audiences:apply`` does, straight into ClickHouse: the same validation
    (every definition checked, in the set and against the stored ones, before any is written)
    and the same order of writes (an audience after those it refers to)."""
    from leadback.audiences.repository import AudienceRepository
    from leadback.audiences.validation import parse_audience_set
    from leadback.store.client import ClickHouseStore
    from leadback.store.migrations import migrate

    audiences = parse_audience_set(document)
    store = ClickHouseStore(settings.clickhouse)
    try:
        await migrate(store)
        written = await AudienceRepository(store).apply(audiences, sites=settings.sites)
    finally:
        await store.close()
    return written


@audiences_app.command("list")
def audiences_list(
    site: Annotated[str | None, typer.Option(help="only this site")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Audiences with their versions and member counts."""
    with _one_line_errors(), _admin_client(url, token) as client:
        found = client.list_audiences(site)
    rows = [["SITE", "ID", "VERSION", "MEMBERS", "TTL", "LEVEL", "NAME"]]
    rows += [
        [
            a["site"],
            a["id"],
            str(a["version"]),
            str(a["members"]),
            a["ttl"] or "-",
            "product" if a["product_level"] else "person",
            a["name"],
        ]
        for a in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@audiences_app.command("show")
def audiences_show(
    site: SiteArg, audience_id: AudienceArg, url: UrlOption = None, token: TokenOption = None
) -> None:
    """One definition as YAML, with its version and size."""
    import yaml

    with _one_line_errors(), _admin_client(url, token) as client:
        a = client.show(site, audience_id)
    typer.echo(
        f"# {a['site']}/{a['id']}: version {a['version']}, {a['size']} members, "
        f"updated {a['updated_at']}"
    )
    typer.echo(yaml.safe_dump(a["definition"], sort_keys=False, allow_unicode=True).rstrip())


@audiences_app.command("delete")
def audiences_delete(
    site: SiteArg, audience_id: AudienceArg, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Delete an audience; its members exit."""
    with _one_line_errors(), _admin_client(url, token) as client:
        r = client.delete(site, audience_id)
    typer.echo(f"deleted {site}/{audience_id} (version {r['version']})")


@audiences_app.command("explain")
def audiences_explain(
    site: SiteArg, audience_id: AudienceArg, url: UrlOption = None, token: TokenOption = None
) -> None:
    """The ClickHouse SQL an audience compiles to."""
    with _one_line_errors(), _admin_client(url, token) as client:
        r = client.explain(site, audience_id)
    typer.echo(
        f"-- rule\n{r['rule']}\n\n-- who qualifies\n{r['members']}\n\n"
        f"-- stored memberships\n{r['previous']}"
    )


@audiences_app.command("members")
def audiences_members(
    site: SiteArg,
    audience_id: AudienceArg,
    limit: Annotated[int, typer.Option(min=1, help="print at most this many")] = 100,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Members as tab-separated lines: visitor id, entered at, products."""
    shown = 0
    cursor: str | None = None
    with _one_line_errors(), _admin_client(url, token) as client:
        while shown < limit:
            page = client.members(site, audience_id, limit=min(limit - shown, 1000), cursor=cursor)
            for m in page["members"]:
                typer.echo(f"{m['visitor_id']}\t{m['entered_at']}\t{','.join(m['products'])}")
            shown += len(page["members"])
            cursor = page["next_cursor"]
            if not cursor:
                break
    if cursor:
        typer.echo(f"(more than {shown}; raise --limit or use export)", err=True)


@audiences_app.command("export")
def audiences_export(
    site: SiteArg,
    audience_id: AudienceArg,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="file to write; default stdout")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Every member with e-mail/phone SHA-256 hashes, as CSV or JSON lines."""
    if fmt not in ("csv", "jsonl"):
        typer.echo("error: --format is csv or jsonl", err=True)
        raise typer.Exit(2)
    sink = output.open("wb") if output is not None else typer.get_binary_stream("stdout")
    try:
        with _one_line_errors(), _admin_client(url, token) as client:
            for chunk in client.export(site, audience_id, fmt=fmt):
                sink.write(chunk)
    except typer.Exit:
        if output is not None:
            sink.close()
            output.unlink(missing_ok=True)  # no half-written export left behind
        raise
    if output is not None:
        sink.close()
    else:
        sink.flush()


@app.command()
def erase(
    site: Annotated[str, typer.Option("--site", help="site id")],
    visitor: Annotated[str | None, typer.Option("--visitor", help="a visitor id")] = None,
    user: Annotated[str | None, typer.Option("--user", help="a user id")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Erase a visitor or a user (with every linked visitor id): events, contacts, identity
    and memberships, after an `exit` to every audience they were in."""
    if (visitor is None) == (user is None):
        typer.echo("error: give exactly one of --visitor or --user", err=True)
        raise typer.Exit(2)
    with _one_line_errors(), _admin_client(url, token) as client:
        r = client.erase(site, visitor_id=visitor, user_id=user)
    typer.echo(
        f"erased on {site}: {len(r['persons'])} person(s), {len(r['visitors'])} visitor id(s), "
        f"{r['exits']} audience exit(s)"
    )


def main() -> None:
    """Console-script entry point."""
    app()
