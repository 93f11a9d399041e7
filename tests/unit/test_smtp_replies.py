"""SMTP reply texts as real servers write them: queue ids, redaction, hard-bounce decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadback.destinations.base import DestinationRejected, DestinationUnavailable, RecipientGone
from leadback.destinations.smtp_replies import queue_id, redact, reply_error


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("2.0.0 Ok: queued as 4BQ2Fx3KXyz1", "4BQ2Fx3KXyz1"),  # Postfix
        ("OK id=1tZ9Qx-000Abc-7Q", "1tZ9Qx-000Abc-7Q"),  # Exim
        ("2.0.0 4BF1x2aB012345 Message accepted for delivery", "4BF1x2aB012345"),  # Sendmail
        ("Ok 0100018d4f2b1a2c-5e3c1f5a-8c7e-000000", "0100018d4f2b1a2c-5e3c1f5a-8c7e-000000"),
        ("Message accepted for delivery", None),  # aiosmtpd's default: no id
        ("2.6.0 <msg_1@shop.example> [InternalId=1] Queued mail for delivery", None),
    ],
)
def test_the_queue_id_is_read_from_known_reply_forms(reply: str, expected: str | None) -> None:
    assert queue_id(reply) == expected


@given(
    st.from_regex(r"[a-z0-9._+\-]{1,20}@[a-z0-9\-]{1,20}\.[a-z]{2,6}", fullmatch=True),
    st.sampled_from(["<{}>: Recipient address rejected", "user {} unknown", "{}... No such user"]),
)
def test_addresses_never_survive_redaction(address: str, template: str) -> None:
    text = redact("550 5.1.1 " + template.format(address))
    assert address not in text and "@" not in text
    assert "[address]" in text


@pytest.mark.parametrize(
    ("code", "text", "expected", "why"),
    [
        (550, "5.1.1 <x>: User unknown", RecipientGone, "hard_bounce"),
        (550, "Requested action not taken: mailbox unavailable", RecipientGone, "hard_bounce"),
        (554, "5.1.1 no such user", RecipientGone, "hard_bounce"),
        (550, "5.2.1 The account is disabled", RecipientGone, "hard_bounce"),
        (553, "5.1.3 Bad address syntax", RecipientGone, "invalid_address"),
        (550, "5.7.1 Message rejected due to content", DestinationRejected, None),
        (550, "5.7.515 Access denied, domain fails authentication", DestinationRejected, None),
        (552, "5.2.2 Mailbox full", DestinationRejected, None),
        (554, "Transaction failed", DestinationRejected, None),
        (421, "4.7.0 Try again later, closing connection", DestinationUnavailable, None),
        (450, "4.2.1 Receiving mail too quickly", DestinationUnavailable, None),
        (535, "5.7.8 Authentication credentials invalid", DestinationRejected, None),
    ],
)  # fmt: skip
def test_recipient_replies_decide_between_gone_rejected_and_unavailable(
    code: int, text: str, expected: type, why: str | None
) -> None:
    error = reply_error(code, text, "rcpt")
    assert type(error) is expected
    assert error.status == code
    if isinstance(error, RecipientGone):
        assert error.why == why
    assert error.reason == ("smtp_auth" if code == 535 else f"smtp_{code}")


def test_a_refusal_at_mail_or_data_is_never_a_gone_recipient() -> None:
    for phase in ("mail", "data"):
        error = reply_error(550, "5.1.1 User unknown", phase)  # type: ignore[arg-type]
        assert type(error) is DestinationRejected
