"""Deep-link start tokens and webhook secrets: round trips, Telegram's limits, refusals."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadback.destinations.telegram_link import (
    MAX_START_PARAMETER,
    is_bot_username,
    telegram_deep_link,
    telegram_link_endpoint,
    telegram_start_token,
    telegram_visitor_id,
    telegram_webhook_path,
    telegram_webhook_secret,
    telegram_webhook_secret_ok,
)
from leadback.errors import InvalidInputError
from leadback.signed_tokens import TokenSigner

KEY = b"k" * 32
OLD_KEY = b"o" * 32
signer = TokenSigner(KEY)
START_PARAMETER = re.compile(r"[A-Za-z0-9_-]{1,64}")
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")  # setWebhook's secret_token

visitor_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)


@given(visitor_ids)
def test_a_start_token_round_trips_within_telegrams_limit(visitor_id: str) -> None:
    token = telegram_start_token(signer, visitor_id)
    assert START_PARAMETER.fullmatch(token)
    assert len(token) == 38 <= MAX_START_PARAMETER
    assert telegram_visitor_id(signer, token) == visitor_id
    # A rotated-out key still verifies what it signed.
    assert telegram_visitor_id(TokenSigner(OLD_KEY, KEY), token) == visitor_id


@given(visitor_ids, st.integers(min_value=0, max_value=37), st.sampled_from("AQgw_-"))
def test_a_changed_token_is_refused(visitor_id: str, at: int, char: str) -> None:
    token = telegram_start_token(signer, visitor_id)
    changed = token[:at] + char + token[at + 1 :]
    if changed != token:
        with pytest.raises(InvalidInputError, match="invalid_token"):
            telegram_visitor_id(signer, changed)


def test_other_tokens_are_refused() -> None:
    visitor_id = "0123456789abcdef0123456789abcdef"
    token = telegram_start_token(signer, visitor_id)
    refused = [
        telegram_start_token(TokenSigner(OLD_KEY), visitor_id),  # another key
        signer.sign("unsubscribe", bytes.fromhex(visitor_id)),  # another purpose
        signer.sign("telegram", b"short"),  # not a visitor id
        token + "=",  # not a start parameter
        "",
        "a" * 65,
    ]
    for bad in refused:
        with pytest.raises(InvalidInputError, match="invalid_token"):
            telegram_visitor_id(signer, bad)
    for bad_id in ["0123", "0123456789ABCDEF0123456789ABCDEF", visitor_id + "\n", "g" * 32]:
        with pytest.raises(InvalidInputError, match="invalid_visitor_id"):
            telegram_start_token(signer, bad_id)


def test_deep_link() -> None:
    token = telegram_start_token(signer, "0123456789abcdef0123456789abcdef")
    assert telegram_deep_link("ShopBot", token) == f"https://t.me/ShopBot?start={token}"
    with pytest.raises(InvalidInputError, match="invalid_bot"):
        telegram_deep_link("shop", token)
    with pytest.raises(InvalidInputError, match="invalid_token"):
        telegram_deep_link("ShopBot", "has space")
    assert (
        telegram_link_endpoint("https://t.shop.example/", "tg-shop", "ShopBot")
        == "https://t.shop.example/v1/telegram/tg-shop/link?bot=ShopBot&redirect=1"
    )
    with pytest.raises(InvalidInputError, match="invalid_bot"):
        telegram_link_endpoint("https://t.shop.example", "tg-shop", "Shop&x=1")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("ShopBot", True),
        ("shop_helper_bot", True),
        ("a1bot", True),
        ("A" + "b" * 28 + "bot", True),  # 32 characters
        ("A" + "b" * 29 + "bot", False),  # 33
        ("abot", False),  # 4
        ("1shopbot", False),
        ("shop", False),
        ("shop-bot", False),
        ("ShopBot\n", False),
        ("ShopBot?start=x", False),
    ],
)
def test_bot_usernames(name: str, ok: bool) -> None:
    assert is_bot_username(name) is ok


@given(
    st.text(min_size=1, max_size=64), st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,63}", fullmatch=True)
)
def test_a_webhook_secret_fits_set_webhook_for_any_ids(site_id: str, destination_id: str) -> None:
    secret = telegram_webhook_secret(signer, site_id, destination_id)
    assert SECRET_TOKEN.fullmatch(secret) and len(secret) == 38
    assert telegram_webhook_secret_ok(signer, site_id, destination_id, secret)
    assert telegram_webhook_secret_ok(TokenSigner(OLD_KEY, KEY), site_id, destination_id, secret)
    assert not telegram_webhook_secret_ok(signer, site_id + "x", destination_id, secret)
    assert not telegram_webhook_secret_ok(signer, site_id, destination_id + "x", secret)
    assert not telegram_webhook_secret_ok(TokenSigner(OLD_KEY), site_id, destination_id, secret)


def test_a_webhook_secret_is_not_a_start_token() -> None:
    secret = telegram_webhook_secret(signer, "demo", "tg-shop")
    assert not telegram_webhook_secret_ok(signer, "demo", "tg-shop", None)
    assert not telegram_webhook_secret_ok(signer, "demo", "tg-shop", "")
    with pytest.raises(InvalidInputError):
        telegram_visitor_id(signer, secret)  # another purpose, though also 16 bytes
    assert telegram_webhook_path("demo", "tg-shop") == "/v1/telegram/demo/tg-shop/webhook"
    assert telegram_webhook_path("a/b c", "tg") == "/v1/telegram/a%2Fb%20c/tg/webhook"
