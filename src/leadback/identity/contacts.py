"""Contact details in traits: normalized, hashed for ad networks, encrypted for messaging.

Traits carry contact details (e-mail, phone, name, address). They never travel in clear on the
events topic nor land in clear in ClickHouse: every consumer of the topic and every reader of
the table would hold them, and both keep data for months. At ingest, :func:`protect_traits`
rewrites each event's traits once, before the event is serialized:

====================================  ======================================================
client key (case-insensitive)         what goes to the topic instead
====================================  ======================================================
``email`` ``e-mail`` ``mail``         ``email_sha256``, ``email_enc``
``phone`` ``phone_number`` ``mobile``  ``phone_sha256``, ``phone_enc``
``first_name`` ``firstname`` ``fn``   ``first_name_sha256``, ``first_name_enc``
``last_name`` ``lastname`` ``ln``     ``last_name_sha256``, ``last_name_enc``
``city`` ``ct``                       ``city_sha256``
``state`` ``st``                      ``state_sha256``
``zip`` ``zip_code`` ``postal_code``  ``zip_sha256``
``zp``
``country``                           ``country_sha256``
anything else                         unchanged
====================================  ======================================================

``*_sha256`` is the lower-case hex SHA-256 of the normalized value: what ad networks match
audiences on (Google Customer Match, Meta Custom Audiences), so a destination uploads it as
is and never needs the clear text. E-mail and phone also get ``*_enc``, a Fernet token
(:class:`ContactCipher`) a messaging destination decrypts to send a mail or a text; first and
last names get one too (of the name as written, case kept, spaces collapsed), so a message can
greet the person. Nobody sends anything to a bare city or postal code. A hash of a normalized
value is stable, so it still identifies a person across events: pseudonymous, not anonymous
(an e-mail hash can be reversed by guessing), and handled like any other identifier.

Only top-level trait keys are recognized; contact details nested deeper pass through as sent.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import phonenumbers
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from leadback.errors import ConfigError, ContactDecryptError, InvalidInputError
from leadback.generated_secrets import generated_secret
from leadback.logs import get_logger

if TYPE_CHECKING:
    from leadback.settings import Settings

log = get_logger(__name__)

MAX_EMAIL: Final = 254  # RFC 5321's limit on a forward path

#: Client trait key (lower-cased) -> the contact field it carries.
CONTACT_ALIASES: Final[Mapping[str, str]] = {
    "email": "email",
    "e-mail": "email",
    "mail": "email",
    "phone": "phone",
    "phone_number": "phone",
    "mobile": "phone",
    "first_name": "first_name",
    "firstname": "first_name",
    "fn": "first_name",
    "last_name": "last_name",
    "lastname": "last_name",
    "ln": "last_name",
    "city": "city",
    "ct": "city",
    "state": "state",
    "st": "state",
    "zip": "zip",
    "zip_code": "zip",
    "postal_code": "zip",
    "zp": "zip",
    "country": "country",
}
_ENCRYPTED: Final = frozenset({"email", "phone", "first_name", "last_name"})
_DISPLAYED: Final = frozenset({"first_name", "last_name"})  # encrypted as written
_DERIVED_SUFFIXES: Final = ("_sha256", "_enc")


def _invalid(field: str, detail: str) -> InvalidInputError:
    # The detail never quotes the value: it is a contact detail, and errors are logged and
    # recorded on the invalid topic.
    return InvalidInputError("invalid_trait", detail, field=f"traits.{field}")


def _fold(value: str) -> str:
    """NFKC, lower-cased, NFKC again (lower-casing can leave a string out of normal form)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).lower())


def normalize_email(value: str) -> str:
    """``" John.Doe@Example.COM "`` -> ``"john.doe@example.com"``: NFKC, stripped, lower-cased.

    Raises ``InvalidInputError("invalid_trait", field="traits.email")`` unless the result has
    one ``@``, a non-empty local part, a domain with a dot and no empty label, no whitespace
    or control characters, and at most 254 characters. No provider-specific rewriting (such
    as dropping dots for Gmail): destinations that want it do it on their side.
    """
    email = _fold(value).strip()
    local, _, domain = email.partition("@")
    if (
        not local
        or "." not in domain
        or not all(domain.split("."))
        or "@" in domain
        or len(email) > MAX_EMAIL
        or not email.isprintable()
        or any(ch.isspace() for ch in email)
    ):
        raise _invalid(
            "email", "not an e-mail address (name@domain.tld, no spaces, <= 254 characters)"
        )
    return email


def normalize_phone(value: str, default_region: str | None) -> str:
    """A phone number in E.164 with its ``+``: ``"(415) 555-0123"``, ``"US"`` -> ``"+14155550123"``.

    A number without ``+<country code>`` is read as a number of ``default_region`` (ISO 3166
    alpha-2, e.g. ``"US"``); without a region it is refused. Impossible and invalid numbers
    (by libphonenumber's metadata) raise ``InvalidInputError("invalid_trait",
    field="traits.phone")``.
    """
    text = unicodedata.normalize("NFKC", value).strip()
    if default_region is None and not text.startswith("+"):
        raise _invalid("phone", "a phone number without +<country code> needs a default region")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise _invalid("phone", "not a phone number") from exc
    if not phonenumbers.is_possible_number(number) or not phonenumbers.is_valid_number(number):
        raise _invalid("phone", "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_name(value: str) -> str:
    """First or last name, city, state: NFKC, lower-cased, whitespace stripped and collapsed.

    ``"  Mary   ANN "`` -> ``"mary ann"``; may return ``""`` (the trait is then dropped).
    """
    return unicodedata.normalize("NFKC", " ".join(_fold(value).split()))


def normalize_zip(value: str) -> str:
    """A postal code: NFKC, lower-cased, every space removed: ``"SW1A 1AA"`` -> ``"sw1a1aa"``."""
    return unicodedata.normalize("NFKC", "".join(_fold(value).split()))


def normalize_country(value: str) -> str:
    """A 2-letter ISO 3166 country code, lower-cased: ``" DE "`` -> ``"de"``; ``""`` if blank.

    Only the shape is checked (two ASCII letters); anything else, such as ``"Germany"``, raises
    ``InvalidInputError("invalid_trait", field="traits.country")``.
    """
    country = normalize_name(value)
    if country and not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise _invalid("country", "country must be a 2-letter ISO 3166 code such as 'us'")
    return country


def sha256_hex(value: str) -> str:
    """The lower-case hex SHA-256 of ``value``'s UTF-8 bytes (the ad networks' format)."""
    return hashlib.sha256(value.encode()).hexdigest()


class ContactCipher:
    """Encrypts contact details so only holders of a key can read them (Fernet: AES + HMAC).

    Built from one or more keys: the first encrypts, every one decrypts, so a key rotates by
    putting the new one first and keeping the old ones until no token made with them is left.
    A malformed key is a :class:`~leadback.errors.ConfigError`; a token that does not decrypt
    with any key is a :class:`~leadback.errors.ContactDecryptError`. No cryptography exception
    leaves this class.
    """

    __slots__ = ("_fernet",)

    def __init__(self, keys: Sequence[str]) -> None:
        if isinstance(keys, str) or not keys:
            raise ConfigError("ContactCipher needs a list of one or more keys")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "a contact key is not a Fernet key (32 url-safe base64 bytes)"
            ) from exc

    @staticmethod
    def generate_key() -> str:
        """A new random key, as ``LEADBACK_IDENTITY_CONTACT_KEYS`` expects it."""
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, plain: str) -> str:
        """A token (url-safe base64 text) carrying ``plain``, made with the first key."""
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The text in ``token``; ``ContactDecryptError`` if it is corrupt or made with a key
        this cipher does not have."""
        try:
            return self._fernet.decrypt(token).decode()
        except (InvalidToken, ValueError, TypeError) as exc:  # ValueError: non-ASCII, not UTF-8
            raise ContactDecryptError(
                "the token is corrupt or was made with a key that is not configured"
            ) from exc


_NORMALIZERS: Final[Mapping[str, Callable[[str, str | None], str]]] = {
    "email": lambda v, _: normalize_email(v),
    "phone": normalize_phone,
    "first_name": lambda v, _: normalize_name(v),
    "last_name": lambda v, _: normalize_name(v),
    "city": lambda v, _: normalize_name(v),
    "state": lambda v, _: normalize_name(v),
    "zip": lambda v, _: normalize_zip(v),
    "country": lambda v, _: normalize_country(v),
}


def protect_traits(
    traits: Mapping[str, Any], cipher: ContactCipher, *, default_region: str | None
) -> dict[str, Any]:
    """A new traits dict with every contact detail replaced by its hash (and token).

    See the module docstring for the keys. Other traits pass through untouched. A contact
    value that is ``None`` or blank is dropped; one that is not a string, does not normalize,
    or differs from another alias of the same field (``email`` and ``Mail``) raises
    ``InvalidInputError("invalid_trait")`` with ``field`` naming the client's key and a detail
    that never quotes the value.

    A client key ending in ``_sha256`` or ``_enc`` is refused: those are made here, from values
    we normalized, and destinations upload them without looking; a client-made hash could be
    of anything (un-normalized, or of someone else's address) and a client-made token could be
    any bytes. Call this exactly once per event, at ingest: its output holds such keys, so a
    second call refuses it instead of hashing a hash.
    """
    out: dict[str, Any] = {}
    contacts: dict[str, str] = {}  # field -> normalized value
    shown: dict[str, str] = {}  # names as written (case kept), for greetings
    for key, value in traits.items():
        lower = key.lower()
        if lower.endswith(_DERIVED_SUFFIXES):
            raise _invalid(key, "keys ending in _sha256 or _enc are made by Leadback, not sent")
        field = CONTACT_ALIASES.get(lower)
        if field is None:
            out[key] = value
            continue
        if value is None:
            continue
        if not isinstance(value, str):
            raise _invalid(key, f"{field} must be a string")
        if not value.strip():
            continue
        try:
            normalized = _NORMALIZERS[field](value, default_region)
        except InvalidInputError as exc:
            exc.field = f"traits.{key}"
            raise
        if normalized and contacts.setdefault(field, normalized) != normalized:
            raise _invalid(key, f"two different values for {field}")
        if normalized and field in _DISPLAYED:
            shown.setdefault(field, unicodedata.normalize("NFKC", " ".join(value.split())))
    for field, normalized in contacts.items():
        out[f"{field}_sha256"] = sha256_hex(normalized)
        if field in _ENCRYPTED:
            out[f"{field}_enc"] = cipher.encrypt(shown.get(field, normalized))
    return out


def contact_cipher(settings: Settings) -> ContactCipher:
    """The cipher for ``LEADBACK_IDENTITY_CONTACT_KEYS``; build it once per process.

    In the embedded mode with no keys configured, a key is generated once into
    ``<data_dir>/secrets/contact_key`` (mode 0600) and reused by every later start and by
    every worker process, so tokens stay readable. Losing that file loses the contacts
    encrypted with it. Production refuses to start without keys (see the settings).
    """
    keys = [key.get_secret_value() for key in settings.identity.contact_keys]
    if keys:
        return ContactCipher(keys)
    if settings.environment != "embedded":
        raise ConfigError("LEADBACK_IDENTITY_CONTACT_KEYS is required outside the embedded mode")
    path = settings.data_dir / "secrets" / "contact_key"
    key, created = generated_secret(
        path, ContactCipher.generate_key, setting="LEADBACK_IDENTITY_CONTACT_KEYS"
    )
    cipher = ContactCipher([key])
    log.warning(
        "contact details are encrypted with a generated key; "
        "set LEADBACK_IDENTITY_CONTACT_KEYS to use your own",
        path=str(path),
        created=created,
    )
    return cipher
