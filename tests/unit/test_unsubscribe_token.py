"""Unsubscribe tokens: what the dispatcher signs, ingest reads back, and nothing else."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadback.destinations.unsubscribe import (
    CHANNELS,
    UnsubscribeRequest,
    read_unsubscribe_token,
    unsubscribe_token,
    unsubscribe_url,
)
from leadback.errors import InvalidInputError
from leadback.signed_tokens import TokenSigner

SIGNER = TokenSigner(b"k" * 32)
OTHER_KEY = TokenSigner(b"o" * 32)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

ids = st.text(min_size=1, max_size=60)
requests = st.builds(
    UnsubscribeRequest,
    site_id=ids,
    person_id=ids,
    channel=st.sampled_from(sorted(CHANNELS)),
    campaign_id=st.text(max_size=60),
)


def sign(r: UnsubscribeRequest, signer: TokenSigner = SIGNER) -> str:
    return unsubscribe_token(
        signer,
        site_id=r.site_id,
        person_id=r.person_id,
        channel=r.channel,
        campaign_id=r.campaign_id,
    )


@given(requests)
def test_a_token_reads_back_as_what_was_signed(request: UnsubscribeRequest) -> None:
    token = sign(request)
    assert read_unsubscribe_token(SIGNER, token) == request
    assert set(token) <= set(B64URL)  # goes in a URL path as it is


@given(requests, st.data())
def test_a_token_altered_by_one_character_is_refused(
    request: UnsubscribeRequest, data: st.DataObject
) -> None:
    token = sign(request)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(B64URL).filter(lambda c: c != token[index]))
    altered = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(InvalidInputError) as raised:
        read_unsubscribe_token(SIGNER, altered)
    assert raised.value.reason == "invalid_token"


@given(requests, st.integers(1, 20))
def test_a_shortened_token_is_refused(request: UnsubscribeRequest, cut: int) -> None:
    with pytest.raises(InvalidInputError):
        read_unsubscribe_token(SIGNER, sign(request)[:-cut])


@given(requests)
def test_tokens_of_another_key_or_purpose_are_refused(request: UnsubscribeRequest) -> None:
    with pytest.raises(InvalidInputError):
        read_unsubscribe_token(SIGNER, sign(request, OTHER_KEY))
    payload = orjson.dumps(
        {"s": request.site_id, "p": request.person_id, "c": request.channel, "m": ""}
    )
    with pytest.raises(InvalidInputError):
        read_unsubscribe_token(SIGNER, SIGNER.sign("telegram", payload))


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'{"s": "demo", "p": "", "c": "email", "m": ""}',
     b'{"s": "demo", "p": "u:1", "c": "fax", "m": ""}', b'{"s": "demo", "p": 7, "c": "all"}'],
)  # fmt: skip
def test_a_signed_payload_of_the_wrong_shape_is_refused(payload: bytes) -> None:
    with pytest.raises(InvalidInputError):
        read_unsubscribe_token(SIGNER, SIGNER.sign("unsubscribe", payload))


def test_a_token_is_short_and_names_no_contact() -> None:
    token = unsubscribe_token(
        SIGNER, site_id="demo", person_id="u:42", channel="email", campaign_id="cart-recovery"
    )
    assert len(token) < 120
    assert unsubscribe_url("https://t.shop.example/", token) == (
        f"https://t.shop.example/v1/unsubscribe/{token}"
    )
    with pytest.raises(ValueError):
        unsubscribe_token(SIGNER, site_id="demo", person_id="u:1", channel="fax", campaign_id="")
