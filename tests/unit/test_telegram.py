"""The Telegram channel against a local Bot API stand-in (tests/fakes/telegram.py)."""

from __future__ import annotations

import logging
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
    Message,
    PhoneNumber,
    RecipientGone,
    SendResult,
    TelegramChat,
)
from leadback.destinations.config import ChannelDeps
from leadback.destinations.telegram import TelegramChannel, TelegramConfig, build
from leadback.destinations.telegram_text import utf16_len
from tests.fakes.http_server import serve_app
from tests.fakes.telegram import Answer, FakeTelegram

TOKEN = "123456789:AAF" + "x" * 32
CHAT = 987654321


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeTelegram:
    return FakeTelegram(TOKEN, clock=clock)


@pytest.fixture
async def base_url(fake: FakeTelegram) -> AsyncIterator[str]:
    async with serve_app(fake.app) as url:
        yield url
        fake.release.set()


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_TOKEN", TOKEN)


def config(base_url: str, **overrides: Any) -> TelegramConfig:
    fields: dict[str, Any] = {
        "id": "tg-shop",
        "kind": "telegram",
        "base_url": base_url,
        "bot_token": {"env": "TELEGRAM_TOKEN"},
        "bot_username": "ShopBot",
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return TelegramConfig.model_validate(fields)


def message(chat_id: int = CHAT, text: str = "Your cart misses you", n: int = 1) -> Message:
    return Message(
        delivery_id=f"d{n}",
        site_id="demo",
        campaign_id="c1",
        person_id="p1",
        step=0,
        recipient=TelegramChat(chat_id),
        content=Content(text=text),
    )


async def send_one(channel: TelegramChannel, msg: Message) -> SendResult:
    [result] = await channel.send_batch([msg])
    return result


def assert_clean(result: SendResult, *secrets: str) -> None:
    """Neither the token (or its secret half) nor the chat id in anything the result keeps."""
    texts = [str(result), repr(result), result.response]
    if isinstance(result, DestinationError):
        texts += [result.detail, result.reason]
    for text in texts:
        for secret in (TOKEN, TOKEN.split(":")[1], str(CHAT), *secrets):
            assert secret not in text, text


# --- config ----------------------------------------------------------------------------------


def test_config() -> None:
    cfg = config("https://api.telegram.org")
    assert (cfg.kind, cfg.parse_mode, cfg.link_preview) == ("telegram", None, True)
    assert TelegramConfig.model_fields["base_url"].default == "https://api.telegram.org"
    with pytest.raises(ValidationError):
        config("https://x", bot_token=TOKEN)  # a pasted token is refused
    with pytest.raises(ValidationError):
        config("https://x", bot_username="shop")  # not a bot's username
    with pytest.raises(ValidationError):
        config("https://x", parse_mode="Markdown")  # legacy mode: not offered


# --- sending ---------------------------------------------------------------------------------


async def test_a_message_is_one_json_send_message(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url, parse_mode="HTML", link_preview=False), ChannelDeps(clock))
    result = await send_one(channel, message(text="<b>Back</b> in stock &amp; on sale"))
    await channel.aclose()

    assert isinstance(result, Delivered)
    assert (result.provider_id, result.status) == ("1", 200)
    [sent] = fake.sent
    assert sent == {
        "chat_id": CHAT,
        "text": "<b>Back</b> in stock &amp; on sale",
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
        "at": 0.0,
    }
    assert_clean(result)  # the kept answer is the message id only
    assert channel.kind == "telegram"


async def test_plain_text_by_default(fake: FakeTelegram, base_url: str, clock: ManualClock) -> None:
    channel = build(config(base_url), ChannelDeps(clock))
    await send_one(channel, message())
    await channel.aclose()
    assert fake.sent[0].keys() == {"chat_id", "text", "at"}


async def test_set_webhook_registers_the_url_and_its_secret(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url), ChannelDeps(clock))
    await channel.set_webhook("https://ingest.example/v1/telegram/demo/tg-shop/webhook", "s3cr_t-")
    with pytest.raises(DestinationRejected) as refused:
        await channel.set_webhook("http://plain.example/hook", "s3cr_t-")
    await channel.aclose()
    assert fake.webhook == {
        "url": "https://ingest.example/v1/telegram/demo/tg-shop/webhook",
        "secret_token": "s3cr_t-",
        "allowed_updates": ["message", "my_chat_member"],
    }
    assert refused.value.reason == "telegram_400"
    assert_clean(refused.value)


# --- what answers mean -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steer", "why", "reason", "status"),
    [
        ("blocked", "blocked", "telegram_403", 403),
        ("deactivated", "blocked", "telegram_403", 403),
        ("never_started", "blocked", "telegram_403", 403),
        ("missing", "invalid_address", "telegram_chat_not_found", 400),
    ],
)
async def test_dead_chats_are_recipient_gone(
    fake: FakeTelegram,
    base_url: str,
    clock: ManualClock,
    steer: str,
    why: str,
    reason: str,
    status: int,
) -> None:
    getattr(fake, steer).add(CHAT)
    channel = build(config(base_url), ChannelDeps(clock))
    with capture_logs() as logs:
        result = await send_one(channel, message())
    await channel.aclose()
    assert isinstance(result, RecipientGone)
    assert (result.why, result.reason, result.status) == (why, reason, status)
    assert_clean(result)
    assert [e["reason"] for e in logs if e["event"] == "telegram attempt"] == [reason]
    assert str(CHAT) not in repr(logs) and TOKEN not in repr(logs)


async def test_flood_control_is_unavailable_and_holds_the_chat(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    fake.script.append(Answer(429, "Too Many Requests: retry after 34", retry_after=34))
    channel = build(config(base_url), ChannelDeps(clock))
    throttled = await send_one(channel, message())
    assert isinstance(throttled, DestinationUnavailable)
    assert (throttled.reason, throttled.status, throttled.retry_after) == ("telegram_429", 429, 34)

    # The next message to that chat waits out the 34 s; another chat does not.
    other = await send_one(channel, message(chat_id=CHAT + 1))
    again = await send_one(channel, message())
    await channel.aclose()
    assert isinstance(other, Delivered) and isinstance(again, Delivered)
    assert fake.sent[0]["at"] < 1.0
    assert fake.sent[1]["at"] >= 34.0


@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors_and_timeouts_are_unavailable(
    fake: FakeTelegram, base_url: str, clock: ManualClock, status: int
) -> None:
    fake.script.extend([Answer(status, "Internal Server Error"), Answer(hang=True)])
    channel = build(config(base_url, timeout_s=0.2), ChannelDeps(clock))
    failed = await send_one(channel, message())
    timed_out = await send_one(channel, message(chat_id=CHAT + 1))
    await channel.aclose()
    assert isinstance(failed, DestinationUnavailable)
    assert (failed.reason, failed.status) == (f"http_{status}", status)
    assert isinstance(timed_out, DestinationUnavailable)
    assert timed_out.reason == "timeout"
    assert_clean(failed)
    assert_clean(timed_out)


async def test_a_wrong_token_is_telegram_auth_and_never_quoted(
    fake: FakeTelegram,
    base_url: str,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "123456789:BBF" + "y" * 32
    monkeypatch.setenv("TELEGRAM_TOKEN", wrong)
    caplog.set_level(logging.DEBUG, logger="httpx")
    channel = build(config(base_url), ChannelDeps(clock))
    result = await send_one(channel, message())
    await channel.aclose()
    assert type(result) is DestinationRejected
    assert (result.reason, result.status) == ("telegram_auth", 401)
    assert_clean(result, wrong, wrong.split(":")[1])
    assert "sendMessage" in caplog.text  # httpx logged the request ...
    assert wrong not in caplog.text  # ... with the token redacted
    assert "/bot<redacted>/sendMessage" in caplog.text


async def test_a_migrated_group_is_rejected_without_its_ids(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    fake.script.append(
        Answer(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            migrate_to_chat_id=-1001234567890,
        )
    )
    channel = build(config(base_url), ChannelDeps(clock))
    result = await send_one(channel, message())
    await channel.aclose()
    assert type(result) is DestinationRejected
    assert result.reason == "telegram_chat_migrated"
    assert_clean(result, "1001234567890")


async def test_local_refusals_make_no_request(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url), ChannelDeps(clock))
    empty = await send_one(channel, message(text=" \n"))
    sms = Message("d", "demo", "c", "p", 0, PhoneNumber("+14155550123"), Content(text="hi"))
    wrong = await send_one(channel, sms)
    await channel.aclose()
    assert type(empty) is DestinationRejected and empty.reason == "empty_text"
    assert type(wrong) is DestinationRejected and wrong.reason == "wrong_recipient"
    assert fake.requests == 0


# --- pacing ----------------------------------------------------------------------------------


async def test_one_message_a_second_per_chat(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url, concurrency=1), ChannelDeps(clock))
    results = await channel.send_batch([message(n=i) for i in range(3)])
    await channel.aclose()
    assert all(isinstance(r, Delivered) for r in results)
    assert [s["at"] for s in fake.sent] == [0.0, 1.0, 2.0]  # as the fake's flood check wants
    assert fake.flood_429 == 0


async def test_about_thirty_messages_a_second_per_bot(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url, concurrency=1), ChannelDeps(clock))
    results = await channel.send_batch([message(chat_id=CHAT + i, n=i) for i in range(61)])
    await channel.aclose()
    assert all(isinstance(r, Delivered) for r in results)
    times = [s["at"] for s in fake.sent]
    assert times == pytest.approx([i / 30 for i in range(61)])  # no slower than it must be
    assert fake.flood_429 == 0


async def test_a_concurrent_batch_is_paced_and_keeps_its_order(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    # On a manual clock, one task's sleep moves time for the requests other tasks have in
    # flight, so arrival times at the fake say nothing here (test_pacing checks the pacer's
    # own times under concurrency); what is checked is order, completion, and time spent.
    fake.clock = None
    channel = build(config(base_url, concurrency=8), ChannelDeps(clock))
    batch = [message(chat_id=CHAT + (i % 3 == 0), text=f"m{i}", n=i) for i in range(12)]
    results = await channel.send_batch(batch)
    await channel.aclose()
    assert all(isinstance(r, Delivered) for r in results), results
    texts = [fake.sent[int(r.provider_id or 0) - 1]["text"] for r in results]
    assert texts == [f"m{i}" for i in range(12)]
    assert clock.monotonic() >= 3.0  # 4 messages to CHAT + 1: at least 3 s apart in all


async def test_rate_per_s_overrides_the_bot_rate(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url, concurrency=1, rate_per_s=4), ChannelDeps(clock))
    await channel.send_batch([message(chat_id=CHAT + i, n=i) for i in range(5)])
    await channel.aclose()
    assert [s["at"] for s in fake.sent] == [0.0, 0.25, 0.5, 0.75, 1.0]


# --- text length -----------------------------------------------------------------------------


async def test_overlong_text_is_cut_to_what_telegram_takes(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url), ChannelDeps(clock))
    words = await send_one(channel, message(text="word " * 1000, n=1))
    emoji = await send_one(channel, message(chat_id=CHAT + 1, text="😀" * 3000, n=2))
    await channel.aclose()
    assert isinstance(words, Delivered) and isinstance(emoji, Delivered)
    plain, wide = (s["text"] for s in fake.sent)
    assert plain.endswith("word…") and utf16_len(plain) <= 4096
    assert wide == "😀" * 2047 + "…"  # 2 UTF-16 units each, none split


async def test_formatted_text_counts_what_shows_and_falls_back_to_plain(
    fake: FakeTelegram, base_url: str, clock: ManualClock
) -> None:
    channel = build(config(base_url, parse_mode="HTML"), ChannelDeps(clock))
    markup_heavy = '<a href="https://shop.example/p/1">x</a> ' * 200  # 8,000 raw, 400 shown
    too_long = "<b>" + "a &lt; b " * 800 + "</b>"  # 4,800 shown
    first = await send_one(channel, message(text=markup_heavy, n=1))
    second = await send_one(channel, message(chat_id=CHAT + 1, text=too_long, n=2))
    await channel.aclose()
    assert isinstance(first, Delivered) and isinstance(second, Delivered)
    kept, plain = fake.sent
    assert (kept["text"], kept["parse_mode"]) == (markup_heavy, "HTML")
    assert "parse_mode" not in plain
    assert plain["text"].startswith("a < b a < b") and plain["text"].endswith("…")
    assert utf16_len(plain["text"]) <= 4096
