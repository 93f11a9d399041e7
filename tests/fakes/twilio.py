"""A Twilio Messages API on loopback: ``POST /2010-04-01/Accounts/{sid}/Messages.json``.

It checks what Twilio documents (``references/destinations.md`` section 5): HTTP Basic with the
account SID and auth token (or an API key SID and secret), a form-encoded body, ``To`` in E.164,
one of ``From`` / ``MessagingServiceSid``, a ``Body`` of at most 1600 characters; and answers
like Twilio: 201 with the message resource, or ``{code, message, more_info, status}`` errors.
Twilio quotes numbers in some error messages; so does this fake, so tests can prove they never
reach a stored error.

Tests steer it with sets of numbers (``unsubscribed`` 21610, ``invalid`` 21211, ``unreachable``
21612, ``not_mobile`` 21614), a script of answers for the next requests (429/20429 with
``Retry-After``, 5xx, a hang until released), and ``gate`` (hold requests until that many are in
flight at once: proof that a batch goes out concurrently).

    async with serve_app(fake.app) as base_url: ...
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

E164 = re.compile(r"\+[1-9]\d{1,14}")
MAX_BODY_CHARS = 1600
GATE_TIMEOUT_S = 5.0


@dataclass
class Answer:
    """A scripted answer: an error status with Twilio's code, or a hang (``hang=True``)."""

    status: int = 500
    code: int | None = None
    message: str = "Internal error"
    retry_after: str | None = None
    hang: bool = False


def error(status: int, code: int | None, message: str, **headers: str) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
        "status": status,
    }
    return JSONResponse(body, status_code=status, headers=headers)


class FakeTwilio:
    """One Twilio account."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_key: tuple[str, str] | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.credentials = {account_sid: auth_token}
        if api_key is not None:
            self.credentials[api_key[0]] = api_key[1]
        self.sent: list[dict[str, str]] = []  # form fields of accepted messages
        self.requests = 0
        self.unsubscribed: set[str] = set()
        self.invalid: set[str] = set()
        self.unreachable: set[str] = set()
        self.not_mobile: set[str] = set()
        self.script: collections.deque[Answer] = collections.deque()
        self.gate = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()  # ends scripted hangs (set it before the server stops)
        self._gate_open = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/2010-04-01/Accounts/{sid}/Messages.json", self._messages, methods=["POST"])
            ]
        )

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:
            return False
        expected = self.credentials.get(user)
        return expected is not None and secrets.compare_digest(expected, password)

    async def _messages(self, request: Request) -> JSONResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._wait_gate()
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _wait_gate(self) -> None:
        if not self.gate:
            return
        if self.in_flight >= self.gate:
            self._gate_open.set()
        # Past the timeout the request goes on; the test sees max_in_flight below the gate.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gate_open.wait(), GATE_TIMEOUT_S)

    async def _answer(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return error(401, 20003, "Authenticate")
        if request.path_params["sid"] != self.account_sid:
            return error(404, 20404, "The requested resource was not found")
        form: dict[str, str] = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        if self.script:
            answer = self.script.popleft()
            if answer.hang:
                await self.release.wait()
            headers = {"Retry-After": answer.retry_after} if answer.retry_after else {}
            return error(answer.status, answer.code, answer.message, **headers)
        return self._validate_and_send(form)

    def _validate_and_send(self, form: dict[str, str]) -> JSONResponse:
        to = form.get("To", "")
        sender = form.get("From")
        service = form.get("MessagingServiceSid")
        body = form.get("Body", "")
        if not to:
            return error(400, 21604, "A 'To' phone number is required.")
        if not E164.fullmatch(to) or to in self.invalid:
            return error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not sender and not service:
            return error(400, 21603, "A 'From' phone number is required.")
        if sender and not E164.fullmatch(sender):
            return error(400, 21212, f"The 'From' number {sender} is not a valid phone number.")
        if service and not re.fullmatch(r"MG[0-9a-fA-F]{32}", service):
            return error(400, 21701, "The Messaging Service Sid is invalid.")
        if not body:
            return error(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY_CHARS:
            return error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if to in self.unsubscribed:
            return error(400, 21610, "Attempt to send to unsubscribed recipient")
        if to in self.unreachable:
            return error(
                400,
                21612,
                f"The 'To' phone number: {to}, is not currently reachable using the 'From' "
                f"phone number: {sender} via SMS.",
            )
        if to in self.not_mobile:
            return error(400, 21614, f"'To' number {to} is not a valid mobile number")
        self.sent.append(form)
        sid = "SM" + secrets.token_hex(16)
        resource: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": sender,
            "messaging_service_sid": service,
            "body": body,
            "status": "accepted" if service else "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        return JSONResponse(resource, status_code=201)
