"""``leadback campaigns ...``: clients of the admin API (and ``campaigns apply --offline``,
straight into a stopped stack's store)."""

from __future__ import annotations

import asyncio
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
from leadback.dispatcher.statuses import DELIVERY_STATUSES

if TYPE_CHECKING:
    from leadback.campaigns.repository import Applied
    from leadback.settings import Settings

campaigns_app = typer.Typer(
    help="Define campaigns, destinations and site policies; see what was sent, through the "
    "admin API.",
    no_args_is_help=True,
)

FileOption = Annotated[
    str,
    typer.Option(
        "-f",
        "--file",
        help="YAML or JSON: {destinations: [...], policies: [...], campaigns: [...]}; - for stdin",
    ),
]
SiteOption = Annotated[str | None, typer.Option("--site", help="only this site")]


@campaigns_app.command("apply")
def campaigns_apply(
    file: FileOption,
    url: UrlOption = None,
    token: TokenOption = None,
    offline: Annotated[
        bool,
        typer.Option(
            help="write straight to ClickHouse (LEADBACK_CLICKHOUSE_URL) instead of the admin "
            "API, e.g. into a chDB directory before the stack starts"
        ),
    ] = False,
) -> None:
    """Create or update destinations, policies and campaigns (all validated first)."""
    document = read_document(file)
    if offline:
        settings = settings_or_exit()
        with offline_errors():
            applied = asyncio.run(_apply_offline(settings, document))
        items = [
            {"kind": k, "key": key, "version": v, "status": s} for k, key, v, s in applied.items
        ]
    else:
        with one_line_errors(), admin_client(url, token) as client:
            items = client.apply_campaigns(document)["items"]
    for i in items:
        typer.echo(f"{i['status']} {i['kind']} {i['key']} (version {i['version']})")


async def _apply_offline(settings: Settings, document: Any) -> Applied:
    """What ``POST /v1/campaigns:apply`` does, straight into ClickHouse: the same validation
    (against the stored audiences and destinations) before anything is written."""
    from leadback.campaigns.document import parse_document
    from leadback.campaigns.repository import CampaignRepository
    from leadback.store.client import ClickHouseStore
    from leadback.store.migrations import migrate

    doc = parse_document(document)
    store = ClickHouseStore(settings.clickhouse)
    try:
        await migrate(store)
        return await CampaignRepository(store).apply(doc, sites=settings.sites)
    finally:
        await store.close()


@campaigns_app.command("validate")
def campaigns_validate(file: FileOption, url: UrlOption = None, token: TokenOption = None) -> None:
    """Check a document as `apply` does, writing nothing."""
    document = read_document(file)
    with one_line_errors(), admin_client(url, token) as client:
        r = client.validate_campaigns(document)
    typer.echo(
        f"valid: {r['destinations']} destination(s), {r['policies']} policy(ies), "
        f"{r['campaigns']} campaign(s)"
    )


def _steps(steps: list[dict[str, Any]]) -> str:
    return ",".join(f"{s['channel'] or s['destination']}({s['wait']})" for s in steps)


@campaigns_app.command("list")
def campaigns_list(
    site: SiteOption = None, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Campaigns with their versions, steps (channel and wait) and messages sent."""
    with one_line_errors(), admin_client(url, token) as client:
        found = client.list_campaigns(site)
    echo_table(
        ["SITE", "ID", "VERSION", "AUDIENCE", "STEPS", "HOLDOUT", "ENABLED", "SENT", "NAME"],
        [
            [
                c["site"],
                c["id"],
                str(c["version"]),
                c["audience"],
                _steps(c["steps"]),
                f"{c['holdout']:g}%",
                "yes" if c["enabled"] else "no",
                str(c["deliveries"]["sent"]),
                c["name"],
            ]
            for c in found
        ],
    )


@campaigns_app.command("status")
def campaigns_status(
    site: SiteOption = None, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Deliveries per campaign and current status.

    Campaigns without any show zeros; deleted ones show while they have deliveries.
    """
    with one_line_errors(), admin_client(url, token) as client:
        counts = {(c["site"], c["id"]): c["deliveries"] for c in client.list_campaigns(site)}
        for c in client.delivery_summary(site):
            counts[(c["site"], c["campaign"])] = c["deliveries"]
    echo_table(
        ["CAMPAIGN", *(s.upper() for s in DELIVERY_STATUSES)],
        [
            [f"{s}/{c}", *(str(n.get(status, 0)) for status in DELIVERY_STATUSES)]
            for (s, c), n in sorted(counts.items())
        ],
    )


@campaigns_app.command("deliveries")
def campaigns_deliveries(
    site: SiteOption = None,
    campaign: Annotated[str | None, typer.Option(help="campaign id")] = None,
    person: Annotated[str | None, typer.Option(help="a visitor id, or u:<user_id>")] = None,
    status: Annotated[
        str | None, typer.Option(help="latest status: " + ", ".join(DELIVERY_STATUSES))
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 100,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Deliveries, newest first: the latest state of each message."""
    with one_line_errors(), admin_client(url, token) as client:
        found = client.deliveries(
            site=site, campaign=campaign, person=person, status=status, limit=limit
        )
    echo_table(
        ["LAST_AT", "STATUS", "CAMPAIGN", "STEP", "CHANNEL", "PERSON", "ATTEMPTS", "REASON"],
        [
            [
                d["last_at"],
                d["status"],
                f"{d['site']}/{d['campaign']}",
                str(d["step"]),
                d["channel"],
                d["person"],
                str(d["attempts"]),
                d["reason"] or "-",
            ]
            for d in found
        ],
    )


@campaigns_app.command("show")
def campaigns_show(
    site: Annotated[str, typer.Argument(help="site id")],
    campaign_id: Annotated[str, typer.Argument(help="campaign id")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """One definition as YAML, with its version."""
    import yaml

    with one_line_errors(), admin_client(url, token) as client:
        c = client.campaign(site, campaign_id)
    typer.echo(f"# {c['site']}/{c['id']}: version {c['version']}")
    typer.echo(yaml.safe_dump(c["definition"], sort_keys=False, allow_unicode=True).rstrip())


@campaigns_app.command("delete")
def campaigns_delete(
    site: Annotated[str, typer.Argument(help="site id")],
    campaign_id: Annotated[str, typer.Argument(help="campaign id")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Delete a campaign: what it has pending is cancelled."""
    with one_line_errors(), admin_client(url, token) as client:
        r = client.delete_campaign(site, campaign_id)
    typer.echo(f"deleted {site}/{campaign_id} (version {r['version']})")
