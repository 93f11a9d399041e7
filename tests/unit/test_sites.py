"""Write keys: header forms and lookup."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from leadback.errors import AuthError
from leadback.ingest.sites import SiteRegistry, write_key_from_headers
from leadback.settings import SiteSettings


def test_key_forms() -> None:
    basic = "Basic " + base64.b64encode(b"key123:").decode()
    assert write_key_from_headers(basic, None) == "key123"
    assert write_key_from_headers("Bearer key123", None) == "key123"
    assert write_key_from_headers(None, "key123") == "key123"
    assert write_key_from_headers("Basic !!!", None) is None
    assert write_key_from_headers("Digest x", None) is None
    assert write_key_from_headers(None, None) is None


def test_registry_resolves_keys_to_sites() -> None:
    reg = SiteRegistry(
        {
            "a": SiteSettings(write_key=SecretStr("ka")),
            "b": SiteSettings(write_key=SecretStr("kb"), consent_default="denied"),
        }
    )
    assert reg.site_for_key("kb") == "b"
    assert reg.consent_defaults == {"b": "denied"}
    with pytest.raises(AuthError):
        reg.site_for_key("kc")
    with pytest.raises(AuthError):
        reg.site_for_key(None)
