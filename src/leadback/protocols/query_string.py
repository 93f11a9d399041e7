"""Query strings as the pixel sends them: percent-decoding with a fast path for the escapes
``encodeURIComponent`` leaves in a typical page URL, and the one rule for decoding names (the
parser and the invalid-record redaction must read a name the same way)."""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_to_bytes

from leadback.errors import InvalidInputError

_HEX_DIGITS: Final = "0123456789abcdefABCDEF"
_HEX_BYTE: Final = {a + b: bytes([int(a + b, 16)]) for a in _HEX_DIGITS for b in _HEX_DIGITS}
_HEX_ASCII: Final = {k: v.decode() for k, v in _HEX_BYTE.items() if v[0] < 0x80}


# What encodeURIComponent escapes in a typical page URL. None decodes to '%' or a hex digit,
# so replacing them one after the other cannot create an escape that was not there.
_COMMON_ESCAPES: Final = (
    ("%2F", "/"),
    ("%3A", ":"),
    ("%3F", "?"),
    ("%3D", "="),
    ("%26", "&"),
    ("%20", " "),
    ("%2C", ","),
    ("%23", "#"),
    ("%40", "@"),
    ("%2B", "+"),
    ("%3B", ";"),
)


def _unquote(value: str) -> str:
    """Percent-decode a ``str`` holding ``%``: as ``unquote_to_bytes(value).decode()``
    (malformed escapes kept as written; ``UnicodeDecodeError`` if not UTF-8), faster."""
    decoded = value
    for escape, replacement in _COMMON_ESCAPES:
        decoded = decoded.replace(escape, replacement)
    if "%" not in decoded:
        return decoded
    first, *rest = value.split("%")
    out = [first]
    for chunk in rest:
        char = _HEX_ASCII.get(chunk[:2])
        if char is None:
            # A non-ASCII byte (UTF-8 sequence) or a malformed escape: the exact, slow way.
            return unquote_to_bytes(value).decode()
        out.append(char)
        out.append(chunk[2:])
    return "".join(out)


def parse_query(query: bytes) -> dict[str, str]:
    """``a=1&b=2`` -> ``{"a": "1", "b": "2"}``, the first of repeated names winning."""
    params: dict[str, str] = {}
    try:
        # Decoding the whole query once and unescaping only what holds a '%' is about twice
        # as fast as decoding part by part (most names and many values need no unescaping).
        for part in query.decode().split("&"):
            name, _, value = part.partition("=")
            if "%" in name or "+" in name:
                name = decode_name(name)
            if name in params:
                continue
            if "+" in value:
                value = value.replace("+", " ")
            if "%" in value:
                value = _unquote(value)
            params[name] = value
    except UnicodeDecodeError as exc:
        raise InvalidInputError("bad_encoding", "not UTF-8 after percent-decoding") from exc
    return params


def decode_name(name: str, errors: str = "strict") -> str:
    """A parameter name, ``+`` and percent escapes decoded (``UnicodeDecodeError`` if not
    UTF-8 with ``errors="strict"``)."""
    return unquote_to_bytes(name.replace("+", " ")).decode("utf-8", errors)
