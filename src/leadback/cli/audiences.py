"""``leadback audiences ...`` and ``leadback erase``: clients of the admin API (and
``audiences apply --offline``, straight into a stopped stack's store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from leadback.cli.common import (
    TokenOption,
    UrlOption,
    admin_client,
    echo_table,
    offline_errors,
    one_line_errors,
    read_document,
    settings_or_exit,
)

if TYPE_CHECKING:
    from leadback.audiences.repository import Written
    from leadback.settings import Settings

audiences_app = typer.Typer(
    help="Define audiences and look at their members, through the admin API.",
    no_args_is_help=True,
)


SiteArg = Annotated[str, typer.Argument(help="site id")]
AudienceArg = Annotated[str, typer.Argument(help="audience id")]


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
    document = read_document(file)
    if offline:
        settings = settings_or_exit()
        with offline_errors():
            written = asyncio.run(_apply_offline(settings, document))
        for w in written:
            status = "written" if w.changed else "unchanged"
            typer.echo(
                f"{status} {w.stored.spec.site}/{w.stored.spec.id} (version {w.stored.version})"
            )
        return
    with one_line_errors(), admin_client(url, token) as client:
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
    with one_line_errors(), admin_client(url, token) as client:
        found = client.list_audiences(site)
    echo_table(
        ["SITE", "ID", "VERSION", "MEMBERS", "TTL", "LEVEL", "NAME"],
        [
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
        ],
    )


@audiences_app.command("status")
def audiences_status(
    site: Annotated[str | None, typer.Option(help="only this site")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="progress bars until every audience is live")
    ] = False,
    interval: Annotated[float, typer.Option(help="seconds between polls with --watch")] = 1.0,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Which audiences are live; for a new or changed one, the backfill of its signals over
    stored history and the evaluation of the site, as ranges done."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with one_line_errors(), admin_client(url, token) as client:
        found = client.audience_statuses(site)
        if not watch:
            echo_table(
                ["SITE", "ID", "VERSION", "STATE", "PROGRESS", "EVENTS READ"],
                [
                    [
                        a["site"],
                        a["id"],
                        str(a["version"]),
                        a["state"],
                        _progress(a),
                        str(a["rows_read"]),
                    ]
                    for a in found
                ],
            )
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, transient=False) as bars:
            tasks: dict[tuple[str, str], Any] = {}
            while True:
                for a in found:
                    key = (a["site"], a["id"])
                    label = f"{a['site']}/{a['id']} v{a['version']} {a['state']}"
                    total = max(int(a["total"]), 1)
                    done = total if a["state"] == "live" else int(a["done"])
                    if key not in tasks:
                        tasks[key] = bars.add_task(label, total=total)
                    bars.update(tasks[key], description=label, total=total, completed=done)
                if all(a["state"] == "live" for a in found):
                    return
                time.sleep(interval)
                found = client.audience_statuses(site)


def _progress(a: dict[str, Any]) -> str:
    ranges = f" ({a['done']}/{a['total']})" if a["total"] and a["state"] != "live" else ""
    return f"{a['fraction']:.0%}{ranges}"


@audiences_app.command("show")
def audiences_show(
    site: SiteArg, audience_id: AudienceArg, url: UrlOption = None, token: TokenOption = None
) -> None:
    """One definition as YAML, with its version and size."""
    import yaml

    with one_line_errors(), admin_client(url, token) as client:
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
    with one_line_errors(), admin_client(url, token) as client:
        r = client.delete(site, audience_id)
    typer.echo(f"deleted {site}/{audience_id} (version {r['version']})")


@audiences_app.command("explain")
def audiences_explain(
    site: SiteArg, audience_id: AudienceArg, url: UrlOption = None, token: TokenOption = None
) -> None:
    """The ClickHouse SQL an audience compiles to."""
    with one_line_errors(), admin_client(url, token) as client:
        r = client.explain(site, audience_id)
    typer.echo(
        f"-- rule\n{r['rule']}\n\n-- signals (kept per person as events are stored)\n"
        f"{r.get('signals', '')}\n\n-- who qualifies\n{r['members']}\n\n"
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
    with one_line_errors(), admin_client(url, token) as client:
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
        with one_line_errors(), admin_client(url, token) as client:
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
    with one_line_errors(), admin_client(url, token) as client:
        r = client.erase(site, visitor_id=visitor, user_id=user)
    typer.echo(
        f"erased on {site}: {len(r['persons'])} person(s), {len(r['visitors'])} visitor id(s), "
        f"{r['exits']} audience exit(s)"
    )
