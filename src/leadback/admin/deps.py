"""FastAPI dependencies of the admin API, as ``Annotated`` aliases: context, auth, site."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from leadback.admin.members import MemberQueries
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.repository import AudienceRepository
from leadback.errors import AuthError, InvalidInputError
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore


@dataclass(frozen=True)
class AdminContext:
    """What the routes need; built once by ``create_admin_app``."""

    settings: Settings
    engine: AudienceEngine
    store: ClickHouseStore
    members: MemberQueries
    tokens: tuple[bytes, ...]

    @property
    def repository(self) -> AudienceRepository:
        return self.engine.repository

    def check_site(self, site: str, *, field: str = "site") -> str:
        if site not in self.settings.sites:
            raise InvalidInputError("unknown_site", f"no site {site!r} is configured", field=field)
        return site


def get_context(request: Request) -> AdminContext:
    ctx: AdminContext = request.app.state.admin
    return ctx


Ctx = Annotated[AdminContext, Depends(get_context)]


def get_engine(ctx: Ctx) -> AudienceEngine:
    return ctx.engine


def get_store(ctx: Ctx) -> ClickHouseStore:
    return ctx.store


def get_members(ctx: Ctx) -> MemberQueries:
    return ctx.members


def get_repository(ctx: Ctx) -> AudienceRepository:
    return ctx.repository


Engine = Annotated[AudienceEngine, Depends(get_engine)]
Store = Annotated[ClickHouseStore, Depends(get_store)]
Members = Annotated[MemberQueries, Depends(get_members)]
Repository = Annotated[AudienceRepository, Depends(get_repository)]

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
