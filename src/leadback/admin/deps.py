"""FastAPI dependencies of the admin API, as ``Annotated`` aliases: context, auth, site."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from leadback.admin.members import MemberQueries
from leadback.audiences.repository import AudienceRepository
from leadback.audiences.rules import AudienceSpec
from leadback.audiences.validation import check_site
from leadback.campaigns.repository import CampaignRepository
from leadback.dispatcher.ledger import Ledger
from leadback.dispatcher.steps import StepStore
from leadback.errors import AuthError
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore


class Erased(Protocol):
    """What an erasure removed."""

    @property
    def persons(self) -> list[str]: ...

    @property
    def visitors(self) -> list[str]: ...

    @property
    def exits(self) -> int: ...


class AudienceOps(Protocol):
    """What the admin API uses of the audience engine (``AudienceEngine``), and nothing more."""

    repository: AudienceRepository
    changed: asyncio.Event  # set after a definition write: the engine reloads at once

    def now_ms(self) -> int:
        """The engine's clock, Unix ms."""
        ...

    def explain(
        self,
        spec: AudienceSpec,
        version: int = 0,
        site_audiences: dict[str, AudienceSpec] | None = None,
    ) -> dict[str, str]:
        """``{rule, members, previous}``: the SQL an audience compiles to."""
        ...

    async def erase(self, site: str, *, visitor_id: str | None, user_id: str | None) -> Erased:
        """Remove a visitor or user (and their person) everywhere, publishing exits first."""
        ...


@dataclass(frozen=True)
class AdminContext:
    """What the routes need; built once by ``create_admin_app``."""

    settings: Settings
    engine: AudienceOps
    store: ClickHouseStore
    members: MemberQueries
    tokens: tuple[bytes, ...]
    campaigns: CampaignRepository
    ledger: Ledger
    steps: StepStore

    @property
    def repository(self) -> AudienceRepository:
        return self.engine.repository

    def check_site(self, site: str, *, field: str = "site") -> str:
        """``site`` if configured, else 404 ``unknown_site``."""
        return check_site(site, self.settings.sites, field=field)


def get_context(request: Request) -> AdminContext:
    ctx: AdminContext = request.app.state.admin
    return ctx


Ctx = Annotated[AdminContext, Depends(get_context)]


def get_engine(ctx: Ctx) -> AudienceOps:
    return ctx.engine


def get_members(ctx: Ctx) -> MemberQueries:
    return ctx.members


def get_repository(ctx: Ctx) -> AudienceRepository:
    return ctx.repository


def get_campaigns(ctx: Ctx) -> CampaignRepository:
    return ctx.campaigns


def get_ledger(ctx: Ctx) -> Ledger:
    return ctx.ledger


def get_steps(ctx: Ctx) -> StepStore:
    return ctx.steps


Engine = Annotated[AudienceOps, Depends(get_engine)]
Members = Annotated[MemberQueries, Depends(get_members)]
Repository = Annotated[AudienceRepository, Depends(get_repository)]
Campaigns = Annotated[CampaignRepository, Depends(get_campaigns)]
Deliveries = Annotated[Ledger, Depends(get_ledger)]
Steps = Annotated[StepStore, Depends(get_steps)]

_bearer = HTTPBearer(
    auto_error=False,
    description="`LEADBACK_ADMIN_TOKENS`, or in the embedded mode the generated token in "
    "`<data_dir>/secrets/admin_token`",
)


async def require_token(
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``Authorization: Bearer <token>`` with one of the configured tokens, else 401."""
    given = credentials.credentials.encode() if credentials is not None else b""
    ok = False
    for token in ctx.tokens:  # every token compared, in constant time each
        ok |= hmac.compare_digest(given, token)
    if not ok:
        raise AuthError("missing or invalid admin token")


def known_site(site: str, ctx: Ctx) -> str:
    """The ``{site}`` path parameter, 404 ``unknown_site`` unless configured."""
    return ctx.check_site(site)


def known_site_filter(
    ctx: Ctx, site: Annotated[str | None, Query(description="only this site")] = None
) -> str | None:
    """An optional ``?site=`` filter, 404 ``unknown_site`` unless configured."""
    return None if site is None else ctx.check_site(site)


Site = Annotated[str, Depends(known_site)]
SiteFilter = Annotated[str | None, Depends(known_site_filter)]
