"""The admin API app: audience definitions, sizes, members, exports, explain, erasure.

Every ``/v1`` route needs ``Authorization: Bearer <token>``; ``/docs``, ``/openapi.json`` and
``/healthz`` do not. The routes live in :mod:`leadback.admin.routes` (one module per resource),
their bodies in :mod:`leadback.admin.schemas`, and errors map to HTTP status in one place,
:mod:`leadback.admin.errors`.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError

from leadback.admin.deps import AdminContext, AudienceOps, require_token
from leadback.admin.errors import ERROR_RESPONSES, handle_error
from leadback.admin.members import MemberQueries
from leadback.admin.routes import audiences, erasure, members
from leadback.admin.tokens import admin_tokens
from leadback.errors import LeadbackError
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore


def create_admin_app(settings: Settings, engine: AudienceOps, store: ClickHouseStore) -> FastAPI:
    """The admin API around the engine and store of the process that owns ClickHouse."""
    tokens = tuple(t.encode() for t in admin_tokens(settings))
    app = FastAPI(
        title="Leadback admin",
        version="1",
        summary="Audience definitions, members, exports and erasure",
        openapi_tags=[
            {"name": audiences.TAG, "description": "definitions: rules as data, versioned"},
            {"name": members.TAG, "description": "who is in an audience, and how that changed"},
            {"name": erasure.TAG, "description": "erasure requests"},
        ],
    )
    app.state.admin = AdminContext(settings, engine, store, MemberQueries(store), tokens)
    for routes in (audiences, members, erasure):
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
