"""The admin API's one map from errors to HTTP responses, and its description for OpenAPI.

Every error body is :class:`~leadback.admin.schemas.ErrorBody` ``{error, detail, field}``: bad
input 422 (a request FastAPI could not read as well as a bad definition), missing or wrong
token 401, unknown site, audience or campaign 404, an audience still referred to 409,
ClickHouse away 503 with ``Retry-After``, anything else 500 (logged, never echoed).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from leadback.admin.schemas import ErrorBody
from leadback.errors import AuthError, BackpressureError, InvalidInputError, RetryableError
from leadback.logs import get_logger

log = get_logger(__name__)

RETRY_AFTER_S = 5
_STATUS = {"unauthorized": 401, "not_found": 404, "unknown_site": 404, "in_use": 409}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    404: {"model": ErrorBody, "description": "unknown site, audience or campaign"},
    422: {"model": ErrorBody, "description": "invalid input"},
    503: {"model": ErrorBody, "description": "ClickHouse unavailable; see Retry-After"},
}
"""The statuses every ``/v1`` route may answer with, for OpenAPI."""


def error_response(exc: Exception) -> JSONResponse:
    """Leadback error, or a request FastAPI could not validate -> HTTP response."""
    if isinstance(exc, RequestValidationError):
        exc = _request_error(exc)
    if isinstance(exc, InvalidInputError):
        status = _STATUS.get(exc.reason, 422)
        body = {"error": exc.reason, "detail": exc.detail, "field": exc.field}
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(body, status_code=status, headers=headers)
    if isinstance(exc, RetryableError | BackpressureError):
        retry = getattr(exc, "retry_after", RETRY_AFTER_S)
        log.warning("admin request failed; retryable", error=str(exc))
        return JSONResponse(
            {"error": "unavailable", "detail": "storage unavailable; retry later", "field": None},
            status_code=503,
            headers={"Retry-After": str(max(1, round(retry)))},
        )
    log.error("admin request failed", error=str(exc), kind=type(exc).__name__)
    return JSONResponse({"error": "internal_error", "detail": "", "field": None}, status_code=500)


async def handle_error(_: Request, exc: Exception) -> JSONResponse:
    """The exception handler the app registers for ``LeadbackError`` and
    ``RequestValidationError``."""
    return error_response(exc)


def _request_error(exc: RequestValidationError) -> InvalidInputError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    return InvalidInputError(
        "invalid_request", str(first.get("msg", "invalid request")), field=".".join(loc) or None
    )
