"""Erasure requests: a visitor or a user, and the person they belong to, removed everywhere."""

from __future__ import annotations

from fastapi import APIRouter

from leadback.admin.deps import Engine, Site
from leadback.admin.schemas import ErasureResult

TAG = "privacy"
router = APIRouter(tags=[TAG])


@router.delete(
    "/sites/{site}/visitors/{visitor_id}", summary="Erase a visitor (and the person it belongs to)"
)
async def erase_visitor(site: Site, visitor_id: str, engine: Engine) -> ErasureResult:
    """Removes the person's events, identity links, contacts and memberships, after publishing
    an ``exit`` (reason ``erased``) for each audience they were in."""
    erased = await engine.erase(site, visitor_id=visitor_id, user_id=None)
    return ErasureResult(
        site=site, persons=erased.persons, visitors=erased.visitors, exits=erased.exits
    )


@router.delete(
    "/sites/{site}/users/{user_id}", summary="Erase a user (and every visitor linked to them)"
)
async def erase_user(site: Site, user_id: str, engine: Engine) -> ErasureResult:
    """Like erasing a visitor, starting from the person of ``u:<user_id>``."""
    erased = await engine.erase(site, visitor_id=None, user_id=user_id)
    return ErasureResult(
        site=site, persons=erased.persons, visitors=erased.visitors, exits=erased.exits
    )
