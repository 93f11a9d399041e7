"""What ingest's FastAPI routes share: the context built once per app, the one error mapping,
and the size-limited body reader.

Errors map to HTTP status in exactly one place (:func:`error_response`): invalid input 400,
auth 401, over-size 413, back-pressure 503 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from leadback.clock import Clock
from leadback.enrich.bots import BotDetector
from leadback.enrich.ip import parse_networks
from leadback.errors import AuthError, BackpressureError, InvalidInputError, LeadbackError
from leadback.identity.contacts import ContactCipher
from leadback.ingest.sites import SiteRegistry
from leadback.ingest.stats import IngestStats
from leadback.kafka.delivery import Delivery
from leadback.settings import Settings
from leadback.signed_tokens import TokenSigner


class IngestContext:
    """What the routes need, built once per app."""

    def __init__(
        self,
        settings: Settings,
        sites: SiteRegistry,
        delivery: Delivery,
        stats: IngestStats,
        registry: CollectorRegistry,
        bots: BotDetector,
        cipher: ContactCipher,
        clock: Clock,
        signer: TokenSigner,
    ) -> None:
        self.settings = settings
        self.sites = sites
        self.delivery = delivery
        self.stats = stats
        self.registry = registry
        self.bots = bots
        self.cipher = cipher
        self.clock = clock
        self.signer = signer  # verifies unsubscribe and Telegram link tokens
        self.trusted = parse_networks(settings.ingest.trusted_proxies)


def _ctx(request: Request) -> IngestContext:
    ctx: IngestContext = request.app.state.ctx
    return ctx


Ctx = Annotated[IngestContext, Depends(_ctx)]


class PayloadTooLarge(InvalidInputError):
    """The body is over the configured limit."""

    def __init__(self, detail: str) -> None:
        super().__init__("payload_too_large", detail)


def error_response(exc: LeadbackError) -> JSONResponse:
    if isinstance(exc, BackpressureError):
        return JSONResponse(
            {"error": "backpressure", "detail": str(exc)},
            status_code=503,
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )
    if isinstance(exc, AuthError):
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=401)
    if isinstance(exc, PayloadTooLarge):
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=413)
    if isinstance(exc, InvalidInputError):
        body = {"error": exc.reason, "detail": exc.detail}
        if exc.field is not None:
            body["field"] = exc.field
        return JSONResponse(body, status_code=400)
    return JSONResponse({"error": "internal_error"}, status_code=500)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body that the route reads itself (with
    :func:`read_body`, so the size limit applies before parsing): the model's schema with its
    nested models inlined (``$defs`` would resolve against the OpenAPI document's root)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
        }
    }
