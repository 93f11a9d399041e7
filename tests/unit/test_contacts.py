"""Contact details in traits: normalization, hashes, encryption, and what reaches the topic."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any

import orjson
import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from leadback.errors import ConfigError, ContactDecryptError, InvalidInputError
from leadback.identity.contacts import (
    CONTACT_ALIASES,
    ContactCipher,
    contact_cipher,
    normalize_country,
    normalize_email,
    normalize_name,
    normalize_phone,
    normalize_zip,
    protect_traits,
    sha256_hex,
)
from leadback.settings import load_settings

CIPHER = ContactCipher([ContactCipher.generate_key()])
REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


def invalid(call: Any, *args: Any, **kwargs: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        call(*args, **kwargs)
    assert info.value.reason == "invalid_trait"
    return info.value


# --- examples -------------------------------------------------------------------------------


def test_email_example() -> None:
    assert normalize_email(" John.Doe@Example.COM ") == "john.doe@example.com"
    expected = hashlib.sha256(b"john.doe@example.com").hexdigest()
    assert sha256_hex(normalize_email(" John.Doe@Example.COM ")) == expected
    # NFKC: full-width characters become their ASCII forms
    assert normalize_email("\uff2a\uff2f\uff28\uff2e@example.com") == "john@example.com"


@pytest.mark.parametrize(
    "value",
    [
        "john",
        "@example.com",
        "john@",
        "john@localhost",
        "john@example.",
        "john@.com",
        "john@exa..mple.com",
        "john@@example.com",
        "jo@hn@example.com",
        "john doe@example.com",
        "john\x00@example.com",
        "j" * 250 + "@example.com",
    ],
)
def test_not_an_email(value: str) -> None:
    error = invalid(normalize_email, value)
    assert error.field == "traits.email"
    assert value not in str(error)


def test_phone_examples() -> None:
    assert normalize_phone("(415) 555-0123", "US") == "+14155550123"
    assert normalize_phone("+1 415 555 0123", None) == "+14155550123"
    assert normalize_phone("+1 415 555 0123", "DE") == "+14155550123"  # + wins over the region
    assert normalize_phone("030 1234567", "DE") == "+49301234567"
    assert normalize_phone("0049 30 1234567", "DE") == "+49301234567"
    assert sha256_hex(normalize_phone("(415) 555-0123", "US")) == sha256_hex("+14155550123")


@pytest.mark.parametrize(
    ("value", "region"),
    [
        ("(415) 555-0123", None),  # no + and no region
        ("0123", "US"),  # impossible
        ("+1 555 555 5555 5555", None),  # too long
        ("+999 1234567", None),  # no such country code
        ("call me", "US"),
        ("+1 (111) 111-1111", None),  # possible length, not a valid number
    ],
)
def test_not_a_phone(value: str, region: str | None) -> None:
    error = invalid(normalize_phone, value, region)
    assert error.field == "traits.phone"


def test_names_zip_country() -> None:
    assert normalize_name("  Mary \t  ANN ") == "mary ann"
    assert normalize_name("\uff2d\u00dcLLER") == "müller"
    assert normalize_name("   ") == ""
    assert normalize_zip(" SW1A 1AA ") == "sw1a1aa"
    assert normalize_country(" DE ") == "de"
    assert normalize_country("") == ""
    for bad in ["Germany", "D", "d3", "ü1", "DEU"]:
        assert invalid(normalize_country, bad).field == "traits.country"


def test_protect_traits_example() -> None:
    traits = {
        "Email": " John.Doe@Example.COM ",
        "phone_number": "(415) 555-0123",
        "fn": " Mary  Ann ",
        "LastName": "Smith",
        "ct": "San Francisco",
        "st": "CA",
        "postal_code": "94105",
        "country": "US",
        "plan": "pro",
        "visits": 3,
        "prefs": {"newsletter": True},
    }
    out = protect_traits(traits, CIPHER, default_region="US")
    assert set(out) == {
        "plan",
        "visits",
        "prefs",
        "email_sha256",
        "email_enc",
        "phone_sha256",
        "phone_enc",
        "first_name_sha256",
        "first_name_enc",
        "last_name_sha256",
        "last_name_enc",
        "city_sha256",
        "state_sha256",
        "zip_sha256",
        "country_sha256",
    }
    assert out["plan"] == "pro"
    assert out["visits"] == 3
    assert out["prefs"] == {"newsletter": True}
    assert out["email_sha256"] == hashlib.sha256(b"john.doe@example.com").hexdigest()
    assert out["phone_sha256"] == hashlib.sha256(b"+14155550123").hexdigest()
    assert out["first_name_sha256"] == hashlib.sha256(b"mary ann").hexdigest()
    assert out["state_sha256"] == hashlib.sha256(b"ca").hexdigest()
    assert out["country_sha256"] == hashlib.sha256(b"us").hexdigest()
    assert CIPHER.decrypt(out["email_enc"]) == "john.doe@example.com"
    assert CIPHER.decrypt(out["phone_enc"]) == "+14155550123"
    assert CIPHER.decrypt(out["first_name_enc"]) == "Mary Ann"  # as written, for greetings
    assert CIPHER.decrypt(out["last_name_enc"]) == "Smith"
    assert traits["Email"] == " John.Doe@Example.COM "  # the input is not changed


def test_every_alias_is_recognized() -> None:
    values = {
        "email": "a@b.example",
        "phone": "+14155550123",
        "first_name": "Ann",
        "last_name": "Lee",
        "city": "Paris",
        "state": "Texas",
        "zip": "75001",
        "country": "fr",
    }
    for alias, field in CONTACT_ALIASES.items():
        for key in (alias, alias.upper()):
            out = protect_traits({key: values[field]}, CIPHER, default_region=None)
            assert f"{field}_sha256" in out, key
            assert key not in out


def test_blank_and_null_contact_values_are_dropped() -> None:
    out = protect_traits(
        {"email": "", "phone": "  ", "fn": None, "x": ""}, CIPHER, default_region=None
    )
    assert out == {"x": ""}


@pytest.mark.parametrize(
    ("traits", "field"),
    [
        ({"email_sha256": "0" * 64}, "traits.email_sha256"),
        ({"EMAIL_SHA256": "0" * 64}, "traits.EMAIL_SHA256"),
        ({"phone_enc": "gAAAA"}, "traits.phone_enc"),
        ({"anything_sha256": "x"}, "traits.anything_sha256"),
        ({"email": 42}, "traits.email"),
        ({"zip": 94105}, "traits.zip"),
        ({"phone": ["+14155550123"]}, "traits.phone"),
        ({"mail": "nope"}, "traits.mail"),
        ({"mobile": "12"}, "traits.mobile"),
        ({"country": "France"}, "traits.country"),
        ({"email": "a@b.example", "Mail": "c@d.example"}, "traits.Mail"),
    ],
)
def test_refused_traits(traits: dict[str, Any], field: str) -> None:
    error = invalid(protect_traits, traits, CIPHER, default_region="US")
    assert error.field == field
    for value in traits.values():
        assert str(value) not in error.detail


def test_same_value_under_two_aliases_is_fine() -> None:
    out = protect_traits(
        {"email": "A@b.example", "mail": "a@B.example "}, CIPHER, default_region=None
    )
    assert out["email_sha256"] == sha256_hex("a@b.example")


def test_a_second_call_refuses_instead_of_hashing_a_hash() -> None:
    once = protect_traits({"email": "a@b.example"}, CIPHER, default_region=None)
    invalid(protect_traits, once, CIPHER, default_region=None)


# --- the cipher -----------------------------------------------------------------------------


def test_cipher_errors_are_typed() -> None:
    token = CIPHER.encrypt("a@b.example")
    other = ContactCipher([ContactCipher.generate_key()])
    for bad in [token[:-4], "not a token", "ü", "", token.replace("A", "B")]:
        if bad == token:
            continue
        with pytest.raises(ContactDecryptError):
            CIPHER.decrypt(bad)
    with pytest.raises(ContactDecryptError):
        other.decrypt(token)  # a key that did not make it
    for keys in ([], ["short"], ["x" * 44]):
        with pytest.raises(ConfigError):
            ContactCipher(keys)


def test_rotation_keeps_old_tokens_readable() -> None:
    old, new = ContactCipher.generate_key(), ContactCipher.generate_key()
    token = ContactCipher([old]).encrypt("+14155550123")
    rotated = ContactCipher([new, old])
    assert rotated.decrypt(token) == "+14155550123"
    fresh = rotated.encrypt("+14155550123")
    assert ContactCipher([new]).decrypt(fresh) == "+14155550123"  # the first key encrypts
    with pytest.raises(ContactDecryptError):
        ContactCipher([old]).decrypt(fresh)


# --- properties -----------------------------------------------------------------------------

EMAILS = st.emails().filter(lambda e: len(e) <= 254)
PADDING = st.sampled_from(["", " ", "\t", "  \n", "\u3000"])


@given(EMAILS, PADDING, PADDING, st.booleans())
def test_email_normalization_is_idempotent_and_lower_case(
    email: str, before: str, after: str, upper: bool
) -> None:
    written = before + (email.upper() if upper else email) + after
    normalized = normalize_email(written)
    assert normalized == normalized.lower()
    assert normalized == normalize_email(email)
    assert normalize_email(normalized) == normalized
    assert sha256_hex(normalize_email(normalized)) == sha256_hex(normalized)


ANY_TEXT = st.text(max_size=40) | st.builds(
    "{}@{}.{}".format,
    st.text(min_size=1, max_size=12),
    st.text(min_size=1, max_size=12),
    st.text(max_size=6),
)


@given(ANY_TEXT)
def test_any_text_normalizes_idempotently_or_is_refused(text: str) -> None:
    for normalize in (normalize_name, normalize_zip):
        once = normalize(text)
        assert normalize(once) == once
        assert sha256_hex(normalize(once)) == sha256_hex(once)
    try:
        email = normalize_email(text)
    except InvalidInputError as exc:
        assert exc.reason == "invalid_trait"
    else:
        assert normalize_email(email) == email == email.lower()


def _national(region: str) -> str | None:
    number = phonenumbers.example_number(region)
    if number is None:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


NATIONAL_NUMBERS = st.sampled_from(
    [(region, n) for region in REGIONS if (n := _national(region)) is not None]
)


@given(NATIONAL_NUMBERS)
def test_phone_normalization_is_idempotent_on_its_output(case: tuple[str, str]) -> None:
    region, national = case
    e164 = normalize_phone(national, region)
    assert e164.startswith("+")
    assert e164[1:].isdigit()
    assert normalize_phone(e164, None) == e164
    assert normalize_phone(e164, region) == e164


@given(st.text("0123456789 +-().", max_size=20), st.sampled_from(["US", "DE", "GB", "IT", "BR"]))
def test_any_phone_text_normalizes_idempotently_or_is_refused(text: str, region: str) -> None:
    try:
        e164 = normalize_phone(text, region)
    except InvalidInputError as exc:
        assert exc.reason == "invalid_trait"
        return
    assert normalize_phone(e164, None) == e164


LONG_TEXT = st.text(st.characters(categories=["L", "Zs"]), min_size=8, max_size=30).filter(
    lambda s: len(normalize_name(s)) >= 8
)
CONTACTS = st.fixed_dictionaries(
    {},
    optional={
        "email": EMAILS,
        "phone": NATIONAL_NUMBERS.map(
            lambda case: phonenumbers.format_number(
                phonenumbers.parse(case[1], case[0]), phonenumbers.PhoneNumberFormat.INTERNATIONAL
            )
        ),
        "first_name": LONG_TEXT,
        "lastname": LONG_TEXT,
        "city": LONG_TEXT,
        "state": LONG_TEXT,
        "zip_code": st.from_regex(r"[A-Z0-9]{4,5} [A-Z0-9]{3,4}", fullmatch=True),
        "country": st.sampled_from(["us", "DE", " fr "]),
    },
)


@given(
    CONTACTS, st.dictionaries(st.sampled_from(["plan", "age", "tags"]), st.integers(-1000, 1000))
)
def test_no_contact_value_survives_in_clear(
    contacts: dict[str, str], other: dict[str, int]
) -> None:
    out = protect_traits({**other, **contacts}, CIPHER, default_region=None)
    wire = orjson.dumps(out).decode()
    for key, value in contacts.items():
        assert key not in out
        if key == "country":
            # two letters occur in any hex digest by chance: check the key and hash instead
            assert out["country_sha256"] == sha256_hex(normalize_country(value))
            continue
        assert value not in wire, key
        assert value.strip().lower() not in wire, key
    for key, value in other.items():
        assert out[key] == value


@given(st.text(max_size=200))
def test_encrypt_decrypt_round_trip(plain: str) -> None:
    token = CIPHER.encrypt(plain)
    assert token.isascii()
    assert CIPHER.decrypt(token) == plain


@given(st.text(min_size=1, max_size=50))
def test_rotation_round_trip(plain: str) -> None:
    old, new = ContactCipher.generate_key(), ContactCipher.generate_key()
    token = ContactCipher([old]).encrypt(plain)
    assert ContactCipher([new, old]).decrypt(token) == plain


# --- the cipher from settings ---------------------------------------------------------------


def test_configured_keys_are_used(tmp_path: Path) -> None:
    key = ContactCipher.generate_key()
    settings = load_settings(data_dir=tmp_path, identity={"contact_keys": [SecretStr(key)]})
    token = contact_cipher(settings).encrypt("a@b.example")
    assert ContactCipher([key]).decrypt(token) == "a@b.example"
    assert not (tmp_path / "secrets").exists()


def test_embedded_mode_generates_one_key_file_and_reuses_it(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    with capture_logs() as logs:
        first = contact_cipher(settings)
        second = contact_cipher(settings)
    path = tmp_path / "data" / "secrets" / "contact_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    key = path.read_text().strip()
    assert second.decrypt(first.encrypt("x")) == "x"
    assert ContactCipher([key]).decrypt(first.encrypt("x")) == "x"
    assert [entry["created"] for entry in logs] == [True, False]
    assert all("generated key" in entry["event"] for entry in logs)
    assert key not in repr(logs)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
