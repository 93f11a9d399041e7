"""The admin API app: audience definitions, sizes, members, exports, explain, erasure; campaigns,
destinations, deliveries and scheduled steps.

Every ``/v1`` route needs ``Authorization: Bearer <token>``; ``/docs``, ``/openapi.json`` and
``/healthz`` do not. The routes live in :mod:`leadback.admin.routes` (one module per resource),
their bodies in :mod:`leadback.admin.schemas` and :mod:`leadback.admin.campaign_schemas`, and
errors map to HTTP status in one place, :mod:`leadback.admin.errors`.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError

from leadback.admin.deps import AdminContext, AudienceOps, require_token
from leadback.admin.errors import ERROR_RESPONSES, handle_error
from leadback.admin.members import MemberQueries
from leadback.admin.routes import audiences, campaigns, erasure, members
from leadback.admin.tokens import admin_tokens
from leadback.campaigns.repository import CampaignRepository
from leadback.clock import Clock
from leadback.dispatcher.ledger import Ledger
from leadback.dispatcher.steps import StepStore
from leadback.errors import LeadbackError
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore


def create_admin_app(
    settings: Settings,
    engine: AudienceOps,
    store: ClickHouseStore,
    *,
    clock: Clock | None = None,
) -> FastAPI:
    """The admin API around the engine and store of the process that owns ClickHouse
    (``clock``: stamps campaign definitions; default the system clock)."""
    tokens = tuple(t.encode() for t in admin_tokens(settings))
    app = FastAPI(
        title="Leadback admin",
        version="1",
        summary="Audiences, campaigns, deliveries, exports and erasure",
        openapi_tags=[
            {"name": audiences.TAG, "description": "definitions: rules as data, versioned"},
            {"name": members.TAG, "description": "who is in an audience, and how that changed"},
            {"name": erasure.TAG, "description": "erasure requests"},
            {
                "name": campaigns.TAG,
                "description": "campaigns, destinations and site policies as data; what was "
                "sent to whom, and what is scheduled",
            },
        ],
    )
    app.state.admin = AdminContext(
        settings,
        engine,
        store,
        MemberQueries(store),
        tokens,
        campaigns=CampaignRepository(store, clock=clock),
        ledger=Ledger(store),
        steps=StepStore(store),
    )
    for routes in (audiences, members, erasure, campaigns):
        app.include_router(
            routes.router,
            prefix="/v1",
            dependencies=[Depends(require_token)],
            responses=ERROR_RESPONSES,
        )

    @app.get("/healthz", summary="Liveness", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_exception_handler(LeadbackError, handle_error)
    app.add_exception_handler(RequestValidationError, handle_error)
    return app
