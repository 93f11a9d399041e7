"""The SMS channel against a local Twilio stand-in (tests/fakes/twilio.py)."""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from leadback.clock import ManualClock
from leadback.destinations.base import (
    Content,
    Delivered,
    DestinationError,
    DestinationRejected,
    DestinationUnavailable,
    EmailAddress,
    Message,
    PhoneNumber,
    RecipientGone,
    SendResult,
)
from leadback.destinations.config import ChannelDeps
from leadback.destinations.sms import SmsChannel, SmsConfig, build
from leadback.errors import ConfigError
from tests.fakes.http_server import serve_app
from tests.fakes.twilio import Answer, FakeTwilio

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-0123456789abcdef"
KEY_SID = "SK" + "fedcba9876543210" * 2
KEY_SECRET = "api-key-secret-0123456789"
SERVICE = "MG" + "00112233445566778899aabbccddeeff"
FROM = "+15005550006"
TO = "+14155550123"
TO_DIGITS = TO.lstrip("+")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake() -> FakeTwilio:
    return FakeTwilio(SID, TOKEN, api_key=(KEY_SID, KEY_SECRET))


@pytest.fixture
async def base_url(fake: FakeTwilio) -> AsyncIterator[str]:
    async with serve_app(fake.app) as url:
        yield url
        fake.release.set()


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_TOKEN", TOKEN)
    monkeypatch.setenv("TWILIO_KEY_SECRET", KEY_SECRET)


def config(base_url: str, **overrides: Any) -> SmsConfig:
    fields: dict[str, Any] = {
        "id": "sms-main",
        "kind": "sms",
        "base_url": base_url,
        "account_sid": SID,
        "auth_token": {"env": "TWILIO_TOKEN"},
        "from_number": FROM,
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return SmsConfig.model_validate({k: v for k, v in fields.items() if v is not None})


def message(to: str = TO, text: str = "Your cart misses you", n: int = 1) -> Message:
    return Message(
        delivery_id=f"d{n}",
        site_id="demo",
        campaign_id="c1",
        person_id="p1",
        step=0,
        recipient=PhoneNumber(to),
        content=Content(text=text),
    )


async def send_one(channel: SmsChannel, msg: Message) -> SendResult:
    [result] = await channel.send_batch([msg])
    return result


def assert_no_number(result: SendResult, *numbers: str) -> None:
    texts = [str(result), result.response]
    if isinstance(result, DestinationError):
        texts += [result.detail, result.reason]
    for text in texts:
        for number in numbers:
            assert number.lstrip("+") not in text, text


# --- config ----------------------------------------------------------------------------------


def test_config_takes_exactly_one_sender_and_one_credential() -> None:
    ok = config("https://api.twilio.com")
    assert (ok.kind, ok.from_number, ok.messaging_service_sid) == ("sms", FROM, None)
    assert config("https://x", from_number=None, messaging_service_sid=SERVICE).from_number is None
    with pytest.raises(ValidationError, match="exactly one of from_number"):
        config("https://x", messaging_service_sid=SERVICE)
    with pytest.raises(ValidationError, match="exactly one of from_number"):
        config("https://x", from_number=None)
    with pytest.raises(ValidationError, match="go together"):
        config("https://x", auth_token=None, api_key_sid=KEY_SID)
    with pytest.raises(ValidationError, match="exactly one of auth_token"):
        config("https://x", api_key_sid=KEY_SID, api_key_secret={"env": "TWILIO_KEY_SECRET"})


def test_config_refuses_a_pasted_token_and_a_number_that_is_not_e164() -> None:
    with pytest.raises(ValidationError):
        config("https://x", auth_token=TOKEN)
    with pytest.raises(ValidationError):
        config("https://x", from_number="415-555-0100")
    assert SmsConfig.model_fields["base_url"].default == "https://api.twilio.com"


def test_build_names_a_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_TOKEN")
    with pytest.raises(ConfigError, match="TWILIO_TOKEN"):
        build(config("https://x"), ChannelDeps(clock=ManualClock()))


# --- sending ---------------------------------------------------------------------------------


async def test_a_message_is_one_form_post_with_basic_auth(
    fake: FakeTwilio, base_url: str, clock: ManualClock
) -> None:
    cfg = config(base_url, status_callback="https://ingest.example/v1/sms/status")
    channel = build(cfg, ChannelDeps(clock=clock))
    result = await send_one(channel, message())
    await channel.aclose()

    assert isinstance(result, Delivered)
    assert result.status == 201
    assert result.provider_id and result.provider_id.startswith("SM")
    assert fake.sent == [
        {
            "To": TO,
            "From": FROM,
            "Body": "Your cart misses you",
            "StatusCallback": "https://ingest.example/v1/sms/status",
        }
    ]
    assert_no_number(result, TO, FROM)  # the kept answer has the sid and status only
    assert channel.kind == "sms"


async def test_a_messaging_service_and_an_api_key(
    fake: FakeTwilio, base_url: str, clock: ManualClock
) -> None:
    cfg = config(
        base_url,
        from_number=None,
        messaging_service_sid=SERVICE,
        auth_token=None,
        api_key_sid=KEY_SID,
        api_key_secret={"env": "TWILIO_KEY_SECRET"},
    )
    channel = build(cfg, ChannelDeps(clock=clock))
    result = await send_one(channel, message())
    await channel.aclose()
    assert isinstance(result, Delivered)
    assert fake.sent == [{"To": TO, "MessagingServiceSid": SERVICE, "Body": "Your cart misses you"}]


async def test_a_batch_goes_out_concurrently_and_results_keep_their_order(
    fake: FakeTwilio, base_url: str, clock: ManualClock
) -> None:
    fake.gate = 4  # the fake holds each request until four are in flight together
    fake.unsubscribed.add("+14155550102")
    channel = build(config(base_url, concurrency=4), ChannelDeps(clock=clock))
    assert channel.max_batch == 4
    numbers = [f"+1415555010{i}" for i in range(4)]
    results = await channel.send_batch([message(n, n=i) for i, n in enumerate(numbers)])
    await channel.aclose()

    assert fake.max_in_flight == 4
    assert [type(r) for r in results] == [Delivered, Delivered, RecipientGone, Delivered]
    sent_to = {f["To"] for f in fake.sent}
    assert sent_to == {numbers[0], numbers[1], numbers[3]}


# --- what answers mean -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steer", "kind", "reason", "why"),
    [
        ("unsubscribed", RecipientGone, "twilio_21610", "unsubscribed"),
        ("invalid", RecipientGone, "twilio_21211", "invalid_address"),
        ("unreachable", RecipientGone, "twilio_21612", "invalid_address"),
        ("not_mobile", RecipientGone, "twilio_21614", "invalid_address"),
    ],
)
async def test_dead_numbers_are_recipient_gone_and_never_quoted(
    fake: FakeTwilio,
    base_url: str,
    clock: ManualClock,
    steer: str,
    kind: type[DestinationError],
    reason: str,
    why: str,
) -> None:
    getattr(fake, steer).add(TO)
    channel = build(config(base_url), ChannelDeps(clock=clock))
    with capture_logs() as logs:
        result = await send_one(channel, message())
    await channel.aclose()

    assert isinstance(result, kind)
    assert isinstance(result, RecipientGone)
    assert (result.reason, result.why, result.status) == (reason, why, 400)
    assert f'"code":{reason.removeprefix("twilio_")}' in result.response
    assert_no_number(result, TO, FROM)
    assert [e["reason"] for e in logs if e["event"] == "sms attempt"] == [reason]
    assert TO_DIGITS not in repr(logs)


async def test_throttling_is_unavailable_and_honours_retry_after(
    fake: FakeTwilio, base_url: str, clock: ManualClock
) -> None:
    later = email.utils.formatdate(clock.now() + 90, usegmt=True)
    fake.script.extend(
        [
            Answer(429, 20429, "Too Many Requests", retry_after="7"),
            Answer(429, None, "Too Many Requests", retry_after=later),
            Answer(429, 20429, "Too Many Requests"),
        ]
    )
    channel = build(config(base_url, concurrency=1), ChannelDeps(clock=clock))
    results = await channel.send_batch([message(n=i) for i in range(3)])
    await channel.aclose()

    assert [type(r) for r in results] == [DestinationUnavailable] * 3
    first, second, third = results
    assert isinstance(first, DestinationUnavailable)
    assert (first.reason, first.status, first.retry_after) == ("twilio_20429", 429, 7.0)
    assert isinstance(second, DestinationUnavailable)
    assert (second.reason, second.retry_after) == ("http_429", pytest.approx(90, abs=1))
    assert isinstance(third, DestinationUnavailable)
    assert third.retry_after is None
    assert fake.sent == []


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_unavailable(
    fake: FakeTwilio, base_url: str, clock: ManualClock, status: int
) -> None:
    fake.script.append(Answer(status, 20500, "An internal server error has occurred"))
    channel = build(config(base_url), ChannelDeps(clock=clock))
    result = await send_one(channel, message())
    await channel.aclose()
    assert isinstance(result, DestinationUnavailable)
    assert (result.reason, result.status) == (f"http_{status}", status)


async def test_a_timeout_and_a_refused_connection_are_unavailable(
    fake: FakeTwilio, base_url: str, clock: ManualClock
) -> None:
    fake.script.append(Answer(hang=True))
    channel = build(config(base_url, timeout_s=0.2), ChannelDeps(clock=clock))
    result = await send_one(channel, message())
    await channel.aclose()
    assert isinstance(result, DestinationUnavailable)
    assert result.reason == "timeout"
    assert_no_number(result, TO)

    async with serve_app(FakeTwilio(SID, TOKEN).app) as closed_url:
        pass  # the port is free again: nothing listens there
    channel = build(config(closed_url), ChannelDeps(clock=clock))
    result = await send_one(channel, message())
    await channel.aclose()
    assert isinstance(result, DestinationUnavailable)
    assert result.reason == "connection_error"


async def test_refused_credentials_are_sms_auth(
    fake: FakeTwilio, base_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_TOKEN", "not-the-token")
    channel = build(config(base_url), ChannelDeps(clock=clock))
    result = await send_one(channel, message())
    await channel.aclose()
    assert type(result) is DestinationRejected
    assert (result.reason, result.status) == ("sms_auth", 401)
    assert "not-the-token" not in str(result) + result.response


async def test_other_refusals_are_rejected_with_the_twilio_code(
    fake: FakeTwilio, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url), ChannelDeps(clock=clock))
    result = await send_one(channel, message(text="x" * 1601))
    await channel.aclose()
    assert type(result) is DestinationRejected
    assert (result.reason, result.status) == ("twilio_21617", 400)


async def test_bad_recipients_are_refused_before_any_request(
    fake: FakeTwilio, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url), ChannelDeps(clock=clock))
    not_e164 = await send_one(channel, message(to="0044 20 7946 0000"))
    empty = await send_one(channel, message(text="  "))
    mail = Message(
        delivery_id="d9",
        site_id="demo",
        campaign_id="c1",
        person_id="p1",
        step=0,
        recipient=EmailAddress("ada@example.com"),
        content=Content(text="hi"),
    )
    wrong = await send_one(channel, mail)
    await channel.aclose()

    assert isinstance(not_e164, RecipientGone)
    assert (not_e164.why, not_e164.reason) == ("invalid_address", "sms_invalid_number")
    assert "7946" not in str(not_e164)
    assert type(empty) is DestinationRejected and empty.reason == "empty_body"
    assert type(wrong) is DestinationRejected and wrong.reason == "wrong_recipient"
    assert fake.requests == 0
