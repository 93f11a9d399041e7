"""One-click unsubscribe (RFC 8058) on ingest: ``GET|POST /v1/unsubscribe/{token}``.

The link comes from a message's ``List-Unsubscribe`` header or its footer
(:func:`leadback.destinations.unsubscribe.unsubscribe_url`). The token is the only
credential: no cookie, no key.

* ``POST`` unsubscribes: a mail provider's one-click request (body
  ``List-Unsubscribe=One-Click``, multipart/form-data or urlencoded) or a person pressing
  the page's button (any small body, or none). It submits a ``leadback.suppressed`` signal
  (subject ``person:<id>``, the token's channel or ``all``, reason ``unsubscribed``) and
  answers 200 with a short page. Repeating it answers 200 again (the suppression is keyed
  by site, subject and channel). Never a redirect: RFC 8058 forbids one.
* ``GET`` never unsubscribes (mail scanners and link previews fetch every link): it shows a
  page with a button that POSTs.

A forged, altered or other-purpose token answers 400 (a page for browsers, JSON otherwise).
"""

from __future__ import annotations

import html
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from leadback.destinations.unsubscribe import UnsubscribeRequest, read_unsubscribe_token
from leadback.errors import InvalidInputError, LeadbackError
from leadback.ingest.context import Ctx, IngestContext, error_response, read_body
from leadback.ingest.signals import submit_signal

router = APIRouter(tags=["channels"])

MAX_BODY: Final = 8192  # "List-Unsubscribe=One-Click" as multipart is well under 1 KB
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'",
}
_WHAT: Final = {
    "email": "these e-mails",
    "sms": "these text messages",
    "webpush": "these notifications",
    "telegram": "these Telegram messages",
    "webhook": "these messages",
    "all": "all our messages",
}
_HTML_ERROR = {"content": {"text/html": {}}, "description": "an HTML page saying why"}
_ERROR_JSON = {
    "content": {
        "application/json": {
            "example": {"error": "invalid_token", "detail": "the link is not valid"}
        },
    }
}


def _page(status: int, title: str, body: str) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _invalid_page() -> HTMLResponse:
    return _page(
        400,
        "This link is not valid",
        "<p>The unsubscribe link is incomplete or was altered. "
        "Copy the whole link from the message, or use the link in a more recent one.</p>",
    )


def _count(ctx: IngestContext, status: int) -> None:
    ctx.stats.requests[("unsubscribe", status)] += 1


@router.get(
    "/v1/unsubscribe/{token}",
    response_class=HTMLResponse,
    responses={
        200: {"description": "a page with a button that unsubscribes (POST)"},
        400: {**_HTML_ERROR, "description": "the token is forged, altered or not for this"},
    },
)
async def unsubscribe_page(token: str, ctx: Ctx) -> Response:
    """Ask before unsubscribing: a page with one button. Changes nothing (link scanners and
    previews fetch every link in a mail)."""
    try:
        asked = read_unsubscribe_token(ctx.signer, token)
    except InvalidInputError:
        _count(ctx, 400)
        return _invalid_page()
    _count(ctx, 200)
    what = _WHAT.get(asked.channel, "these messages")
    return _page(
        200,
        "Unsubscribe?",
        f"<p>Stop receiving {html.escape(what)}?</p>"
        '<form method="post" action="">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


@router.post(
    "/v1/unsubscribe/{token}",
    response_class=HTMLResponse,
    responses={
        200: {
            "description": "unsubscribed (also when repeated); an HTML page for browsers, "
            "plain text otherwise",
            "content": {"text/plain": {"example": "You are unsubscribed."}},
        },
        400: {
            "description": "the token is forged, altered or not for this "
            "(HTML for browsers, JSON otherwise)",
            **_ERROR_JSON,
        },
        413: {"description": f"a body over {MAX_BODY} bytes", **_ERROR_JSON},
        503: {"description": "local buffers are full; retry after Retry-After seconds"},
    },
)
async def unsubscribe(token: str, request: Request, ctx: Ctx) -> Response:
    """Unsubscribe (RFC 8058 one-click, or the page's button). The body is
    ``List-Unsubscribe=One-Click`` (multipart/form-data or urlencoded) or empty; the token
    decides who and from what. Idempotent; never a redirect."""
    now = ctx.clock.now()
    try:
        await read_body(request, MAX_BODY)  # drained and bounded; its content decides nothing
        asked = read_unsubscribe_token(ctx.signer, token)
        _suppress(ctx, asked, now)
    except LeadbackError as exc:
        invalid = isinstance(exc, InvalidInputError) and exc.reason == "invalid_token"
        response: Response = (
            _invalid_page() if invalid and _wants_html(request) else error_response(exc)
        )
        response.headers.update(_HEADERS)
        _count(ctx, response.status_code)
        return response
    _count(ctx, 200)
    what = _WHAT.get(asked.channel, "these messages")
    if _wants_html(request):
        return _page(
            200,
            "You are unsubscribed",
            f"<p>You will not receive {html.escape(what)} any more.</p>",
        )
    return PlainTextResponse(f"You are unsubscribed from {what}.\n", headers=_HEADERS)


def _suppress(ctx: IngestContext, asked: UnsubscribeRequest, now: float) -> None:
    submit_signal(
        ctx.delivery,
        ctx.settings.kafka.topic_events,
        site_id=asked.site_id,
        # Keyed like the person's own events (persons are "u:<id>" visitors), so the signal
        # stays in order with them on one partition.
        visitor_id=asked.person_id,
        name="leadback.suppressed",
        properties={
            "subject": f"person:{asked.person_id}",
            "channel": asked.channel,
            "reason": "unsubscribed",
            "campaign_id": asked.campaign_id,
        },
        now=now,
    )


# A trailing slash would otherwise be answered with a redirect to the path without it.
router.add_api_route(
    "/v1/unsubscribe/{token}/", unsubscribe_page, methods=["GET"], include_in_schema=False
)
router.add_api_route(
    "/v1/unsubscribe/{token}/", unsubscribe, methods=["POST"], include_in_schema=False
)
