"""The e-mail channel against a real SMTP server (aiosmtpd on a loopback port): what a
mailbox receives, how connections are reused, and what each server answer becomes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from leadback.clock import ManualClock
from leadback.destinations.base import (
    Content,
    Delivered,
    DestinationRejected,
    DestinationUnavailable,
    EmailAddress,
    Message,
    PhoneNumber,
    RecipientGone,
    SendResult,
)
from leadback.destinations.config import ChannelDeps
from leadback.destinations.email import EmailChannel, EmailConfig, build
from tests.fakes.smtp import FakeSmtp, smtp_server

UNSUBSCRIBE = "https://go.shop.example/v1/unsubscribe/" + "eyJzIjoiZGVtbyIsInAiOiJ1OjQyIn0" * 4


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)  # 2027-01-15T08:00:00Z


def config(server: FakeSmtp, **overrides: Any) -> EmailConfig:
    fields: dict[str, Any] = {
        "id": "mail",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "from_address": "news@shop.example",
        "from_name": "Boutique Élise",
        "timeout_s": 5.0,
        "helo_name": "leadback.test",
    }
    return EmailConfig(**(fields | overrides))


@contextlib.asynccontextmanager
async def channel(
    server: FakeSmtp, clock: ManualClock, **overrides: Any
) -> AsyncIterator[EmailChannel]:
    ch = build(config(server, **overrides), ChannelDeps(clock=clock))
    try:
        yield ch
    finally:
        await ch.aclose()


@contextlib.asynccontextmanager
async def mail_server(
    clock: ManualClock,
    *,
    tls: Literal["none", "starttls", "tls"] = "none",
    credentials: tuple[str, str] | None = None,
    trusted: bool = True,
    **overrides: Any,
) -> AsyncIterator[tuple[FakeSmtp, EmailChannel]]:
    """A fake server and a channel pointed at it (trusting its CA unless ``trusted=False``)."""
    async with smtp_server(tls=tls, credentials=credentials) as server:
        if tls != "none":
            overrides = {
                "security": tls,
                "ca_file": server.ca_file if trusted else None,
            } | overrides
        async with channel(server, clock, **overrides) as ch:
            yield server, ch


def message(
    to: str = "alice@example.org",
    *,
    delivery_id: str = "d-0001",
    subject: str = "Your basket misses you",
    text: str = "Come back!",
    html: str | None = "<p>Come back!</p>",
    unsubscribe_url: str | None = UNSUBSCRIBE,
    attempt: int = 1,
) -> Message:
    return Message(
        delivery_id=delivery_id,
        site_id="demo",
        campaign_id="cart",
        person_id="u:42",
        step=0,
        recipient=EmailAddress(to),
        content=Content(text=text, subject=subject, html=html, unsubscribe_url=unsubscribe_url),
        attempt=attempt,
    )


# --- what the mailbox receives ----------------------------------------------------------------


async def test_a_mail_carries_both_parts_the_sender_and_one_click_unsubscribe(
    clock: ManualClock,
) -> None:
    subject = "Vous avez oublié votre panier — 20 % de remise 🎁"
    text = "Bonjour Zoë,\nvotre panier vous attend : 3 articles, 59,90 €.\n"
    html = "<p>Bonjour Zoë, votre panier vous attend&nbsp;: <b>59,90 €</b></p>"
    async with mail_server(
        clock, reply_to="help@shop.example", list_unsubscribe_mailto="unsub@shop.example"
    ) as (server, ch):
        [result] = await ch.send_batch(
            [message(subject=subject, text=text, html=html, delivery_id="0190-abc")]
        )
    assert isinstance(result, Delivered)
    [received] = server.messages
    assert result.provider_id == received.queue_id  # from "250 2.0.0 Ok: queued as <id>"
    assert (received.mail_from, received.rcpt_tos) == ("news@shop.example", ["alice@example.org"])
    mail = received.message
    assert mail["From"].addresses[0].display_name == "Boutique Élise"
    assert mail["From"].addresses[0].addr_spec == "news@shop.example"
    assert mail["To"] == "alice@example.org"
    assert mail["Reply-To"] == "help@shop.example"
    assert mail["Subject"] == subject
    assert b"=?utf-8?" in received.data.split(b"\r\nSubject:")[1].split(b"\r\n")[0]
    assert mail["Date"].datetime.timestamp() == 1_800_000_000.0
    assert mail["Message-ID"] == "<0190-abc@shop.example>"
    assert mail["X-Leadback-Delivery"] == "0190-abc"
    assert mail["List-Unsubscribe"] == (
        f"<{UNSUBSCRIBE}>, <mailto:unsub@shop.example?subject=unsubscribe%200190-abc>"
    )
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"List-Unsubscribe: <{UNSUBSCRIBE}>,".encode() in received.data  # not re-encoded
    assert mail.get_content_type() == "multipart/alternative"
    plain, rich = mail.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content().replace("\r\n", "\n") == text  # CRLF on the wire
    assert rich.get_content_type() == "text/html"
    assert rich.get_content().rstrip() == html
    for name, value in mail.items():
        if name.lower().startswith(("x-", "list-")):
            assert "alice" not in value, name


async def test_a_text_only_mail_is_one_plain_part_without_unsubscribe_headers(
    clock: ManualClock,
) -> None:
    async with mail_server(clock) as (server, ch):
        [result] = await ch.send_batch([message(html=None, unsubscribe_url=None)])
    assert isinstance(result, Delivered)
    mail = server.messages[0].message
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().rstrip() == "Come back!"
    assert mail["List-Unsubscribe"] is None and mail["List-Unsubscribe-Post"] is None


async def test_the_message_id_is_the_same_for_every_attempt_of_one_delivery(
    clock: ManualClock,
) -> None:
    async with mail_server(clock) as (server, ch):
        await ch.send_batch([message(delivery_id="d-7", attempt=1)])
        clock.advance(300)
        await ch.send_batch([message(delivery_id="d-7", attempt=2), message(delivery_id="d-8")])
    first, resent, other = (r.message["Message-ID"] for r in server.messages)
    assert first == resent == "<d-7@shop.example>"
    assert other == "<d-8@shop.example>"


async def test_an_internationalized_domain_is_sent_in_its_ascii_form(clock: ManualClock) -> None:
    async with mail_server(clock) as (server, ch):
        [result] = await ch.send_batch([message("zoe@bücher.example")])
    assert isinstance(result, Delivered)
    assert server.messages[0].rcpt_tos == ["zoe@xn--bcher-kva.example"]


# --- connections ------------------------------------------------------------------------------


async def test_messages_share_a_few_open_connections_across_batches(clock: ManualClock) -> None:
    async with mail_server(clock, pool_size=2) as (server, ch):
        first = await ch.send_batch([message(f"p{i}@example.org") for i in range(12)])
        second = await ch.send_batch([message(f"q{i}@example.org") for i in range(12)])
        assert all(isinstance(r, Delivered) for r in first + second)
        assert len(server.messages) == 24
        assert server.connections == 2
        assert ch.pool.opened == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced(clock: ManualClock) -> None:
    async with mail_server(clock, pool_size=1) as (server, ch):
        await ch.send_batch([message("a@example.org")])
        server.drop_all()
        [result] = await ch.send_batch([message("b@example.org")])
        assert isinstance(result, Delivered)
        assert server.connections == 2
        assert [m.rcpt_tos for m in server.messages] == [["a@example.org"], ["b@example.org"]]


async def test_a_reused_connection_answered_421_is_replaced_without_a_duplicate(
    clock: ManualClock,
) -> None:
    async with mail_server(clock, pool_size=1) as (server, ch):
        await ch.send_batch([message("a@example.org")])
        server.mail_replies.append("421 4.4.2 fake-smtp.test Error: timeout exceeded")
        [result] = await ch.send_batch([message("b@example.org")])
        assert isinstance(result, Delivered)
        assert server.connections == 2
        assert len(server.messages) == 2


async def test_an_idle_connection_older_than_max_idle_is_not_reused(clock: ManualClock) -> None:
    async with mail_server(clock, pool_size=1, max_idle_s=30) as (server, ch):
        await ch.send_batch([message("a@example.org")])
        clock.advance(10)
        await ch.send_batch([message("b@example.org")])
        assert server.connections == 1
        clock.advance(31)
        await ch.send_batch([message("c@example.org")])
        assert server.connections == 2


# --- what the server's answers become -----------------------------------------------------------


async def test_an_unknown_recipient_is_gone_and_the_rest_of_the_batch_is_delivered(
    clock: ManualClock,
) -> None:
    async with mail_server(clock, pool_size=1) as (server, ch):
        server.reject("gone@example.org")
        results = await ch.send_batch(
            [message("a@example.org"), message("gone@example.org"), message("b@example.org")]
        )
    ok_a, gone, ok_b = results
    assert isinstance(ok_a, Delivered) and isinstance(ok_b, Delivered)
    assert isinstance(gone, RecipientGone)
    assert (gone.why, gone.reason, gone.status) == ("hard_bounce", "smtp_550", 550)
    assert "gone@example.org" not in gone.response and "[address]" in gone.response
    assert "5.1.1" in gone.response
    assert [m.rcpt_tos for m in server.messages] == [["a@example.org"], ["b@example.org"]]
    assert server.connections == 1  # reset (RSET) and reused after the refusal


@pytest.mark.parametrize(
    ("reply", "kind", "reason"),
    [
        ("451 4.3.0 Temporary lookup failure", DestinationUnavailable, "smtp_451"),
        ("450 4.2.0 Mailbox busy", DestinationUnavailable, "smtp_450"),
        ("452 4.5.3 Too many recipients", DestinationUnavailable, "smtp_452"),
        ("550 5.7.1 Service unavailable; client host blocked", DestinationRejected, "smtp_550"),
        ("554 5.7.1 Relay access denied", DestinationRejected, "smtp_554"),
        ("553 5.1.3 Bad recipient address syntax", RecipientGone, "smtp_553"),
        ("551 User not local", RecipientGone, "smtp_551"),
    ],
)
async def test_recipient_refusals_map_to_what_the_dispatcher_should_do(
    clock: ManualClock, reply: str, kind: type, reason: str
) -> None:
    async with mail_server(clock) as (server, ch):
        server.rcpt_replies["x@example.org"] = reply
        [result] = await ch.send_batch([message("x@example.org")])
    assert type(result) is kind
    assert isinstance(result, DestinationRejected | DestinationUnavailable)
    assert result.reason == reason
    assert result.status == int(reply[:3])
    if isinstance(result, RecipientGone):
        assert result.why == ("invalid_address" if "5.1.3" in reply else "hard_bounce")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("451 4.3.0 Error: queue file write error", DestinationUnavailable),
        ("554 5.7.1 Message rejected as spam", DestinationRejected),
        ("552 5.3.4 Message size exceeds fixed limit", DestinationRejected),
    ],
)
async def test_a_refused_message_body_is_never_a_gone_recipient(
    clock: ManualClock, reply: str, kind: type
) -> None:
    async with mail_server(clock) as (server, ch):
        server.data_reply = reply
        [result] = await ch.send_batch([message()])
    assert type(result) is kind


async def test_a_connection_dropped_mid_transaction_is_unavailable_for_that_message_only(
    clock: ManualClock,
) -> None:
    async with mail_server(clock, pool_size=1) as (server, ch):
        server.drop_at_rcpt.add("cut@example.org")
        dropped, after = await ch.send_batch([message("cut@example.org"), message()])
    assert isinstance(dropped, DestinationUnavailable)
    assert dropped.reason == "smtp_disconnected"
    assert isinstance(after, Delivered)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_server_that_is_down_makes_every_message_unavailable(clock: ManualClock) -> None:
    ch = EmailChannel(
        EmailConfig(
            id="mail",
            host="127.0.0.1",
            port=_closed_port(),
            security="none",
            from_address="news@shop.example",
        ),
        None,
        clock,
    )
    results = await ch.send_batch([message(f"p{i}@example.org") for i in range(5)])
    await ch.aclose()
    assert all(isinstance(r, DestinationUnavailable) for r in results)
    assert {r.reason for r in results if isinstance(r, DestinationUnavailable)} == {"smtp_connect"}


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """Accepts TCP connections and never says a word (no greeting); yields (port, clients)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], held
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers_times_out_once_per_batch(clock: ManualClock) -> None:
    async with silent_server() as (port, clients):
        cfg = EmailConfig(
            id="mail",
            host="127.0.0.1",
            port=port,
            security="none",
            from_address="news@shop.example",
            timeout_s=0.2,
            helo_name="leadback.test",
        )
        ch = build(cfg, ChannelDeps(clock=clock))
        results = await ch.send_batch([message(f"p{i}@example.org") for i in range(8)])
        await ch.aclose()
        assert len(clients) == 1  # the batch shared one timeout instead of one per message
    assert all(isinstance(r, DestinationUnavailable) and r.reason == "timeout" for r in results)


# --- TLS and authentication ---------------------------------------------------------------------


@pytest.fixture
def smtp_password(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret")
    yield


async def test_starttls_and_login_deliver(clock: ManualClock, smtp_password: None) -> None:
    async with mail_server(
        clock,
        tls="starttls",
        credentials=("mailer", "s3cret"),
        username="mailer",
        password={"env": "TEST_SMTP_PASSWORD"},
    ) as (server, ch):
        results = await ch.send_batch([message(f"p{i}@example.org") for i in range(3)])
    assert all(isinstance(r, Delivered) for r in results)
    assert len(server.messages) == 3


async def test_implicit_tls_delivers(clock: ManualClock) -> None:
    async with mail_server(clock, tls="tls") as (_, ch):
        [result] = await ch.send_batch([message()])
    assert isinstance(result, Delivered)


async def test_a_wrong_password_is_tried_once_per_batch_and_reported_as_smtp_auth(
    clock: ManualClock, smtp_password: None
) -> None:
    async with mail_server(
        clock,
        tls="starttls",
        credentials=("mailer", "other"),
        username="mailer",
        password={"env": "TEST_SMTP_PASSWORD"},
    ) as (server, ch):
        results = await ch.send_batch([message(f"p{i}@example.org") for i in range(6)])
    assert all(isinstance(r, DestinationRejected) for r in results)
    assert {(r.reason, r.status) for r in results if isinstance(r, DestinationRejected)} == {
        ("smtp_auth", 535)
    }
    # one session tried to log in (aiosmtplib tries each offered mechanism on it), not six
    assert server.connections == 1
    assert 1 <= server.logins <= 2
    assert server.messages == []


async def test_a_server_requiring_auth_refuses_an_anonymous_sender_as_smtp_auth(
    clock: ManualClock,
) -> None:
    async with mail_server(clock, credentials=("mailer", "s3cret")) as (_, ch):
        [result] = await ch.send_batch([message()])
    assert isinstance(result, DestinationRejected)
    assert (result.reason, result.status) == ("smtp_auth", 530)


async def test_starttls_required_but_not_offered_is_refused_not_sent_in_clear(
    clock: ManualClock,
) -> None:
    async with mail_server(clock, security="starttls") as (server, ch):
        [result] = await ch.send_batch([message()])
    assert isinstance(result, DestinationRejected) and result.reason == "smtp_tls"
    assert server.messages == []


async def test_an_untrusted_certificate_is_refused(clock: ManualClock) -> None:
    async with mail_server(clock, tls="tls", trusted=False) as (_, ch):
        [result] = await ch.send_batch([message()])
    assert isinstance(result, DestinationRejected) and result.reason == "smtp_tls"


# --- messages that cannot be sent ---------------------------------------------------------------


async def test_messages_that_cannot_become_a_mail_fail_alone(clock: ManualClock) -> None:
    not_email = Message(
        delivery_id="d-9",
        site_id="demo",
        campaign_id="cart",
        person_id="u:42",
        step=0,
        recipient=PhoneNumber("+14155550123"),
        content=Content(text="hi", subject="hi"),
    )
    async with mail_server(clock) as (server, ch):
        results: list[SendResult] = await ch.send_batch(
            [
                message("not an address"),
                message(subject="two\r\nBcc: everyone@example.org"),
                message(subject=""),
                message(text="", html=None),
                message(unsubscribe_url="https://x.example/u/a b"),
                not_email,
                message("fine@example.org"),
            ]
        )
    *bad, fine = results
    assert isinstance(fine, Delivered)
    assert isinstance(bad[0], RecipientGone) and bad[0].why == "invalid_address"
    assert [r.reason for r in bad[1:] if isinstance(r, DestinationRejected)] == [
        "invalid_message",
        "invalid_message",
        "invalid_message",
        "invalid_message",
        "invalid_recipient",
    ]
    assert [m.rcpt_tos for m in server.messages] == [["fine@example.org"]]


# --- configuration ------------------------------------------------------------------------------


def test_the_password_is_a_reference_and_never_travels_in_clear() -> None:
    base = {"id": "mail", "host": "smtp.example.com", "from_address": "news@shop.example"}
    with pytest.raises(ValidationError):
        EmailConfig(**base, username="u", password="plain-text")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="in clear"):
        EmailConfig(**base, security="none", username="u", password={"env": "P"})
    with pytest.raises(ValidationError, match="go together"):
        EmailConfig(**base, username="u")
    local = EmailConfig(
        **(base | {"host": "127.0.0.1"}), security="none", username="u", password={"env": "P"}
    )
    assert local.effective_port == 25
    assert EmailConfig(**base).effective_port == 587
    assert EmailConfig(**base, security="tls").effective_port == 465
    with pytest.raises(ValidationError):
        EmailConfig(**(base | {"from_address": "not-an-address"}))
    with pytest.raises(ValidationError):
        EmailConfig(**base, from_name="Shop\r\nBcc: x@example.org")
