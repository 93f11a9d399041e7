"""Admin tokens: configured ones win; the embedded mode generates one once and keeps it."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from leadback.admin.tokens import admin_tokens, token_path
from leadback.errors import ConfigError
from leadback.settings import Settings, SiteSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LEADBACK_"):
            monkeypatch.delenv(name)


def _embedded(data_dir: Path, **admin: object) -> Settings:
    return load_settings(data_dir=data_dir, admin=admin)


def test_configured_tokens_are_used_as_given(tmp_path: Path) -> None:
    s = _embedded(tmp_path, tokens="first-token, second-token")
    assert admin_tokens(s) == ["first-token", "second-token"]
    assert not token_path(s).exists()


def test_embedded_mode_generates_one_token_and_reuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = _embedded(tmp_path)
    [token] = admin_tokens(s)
    assert re.fullmatch(r"[A-Za-z0-9_\-]{32}", token)
    path = tmp_path / "secrets" / "admin_token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Another process (a later start, the CLI) reads the same token.
    assert admin_tokens(_embedded(tmp_path)) == [token]
    out = capsys.readouterr()
    assert token not in out.out + out.err


def test_different_data_dirs_get_different_tokens(tmp_path: Path) -> None:
    a = admin_tokens(_embedded(tmp_path / "a"))
    b = admin_tokens(_embedded(tmp_path / "b"))
    assert a != b


def test_production_without_tokens_refuses(tmp_path: Path) -> None:
    s = load_settings(
        environment="production",
        data_dir=tmp_path,
        kafka={"bootstrap": "kafka:9092"},
        sites={"shop": SiteSettings(write_key=SecretStr("a-long-enough-write-key"))},
        identity={"contact_keys": [Fernet.generate_key().decode()]},
        dispatcher={"token_keys": ["k" * 32]},
        admin={"port": 0},  # the API is off, so the settings allow no tokens
    )
    with pytest.raises(ConfigError, match="LEADBACK_ADMIN_TOKENS"):
        admin_tokens(s)
    assert not token_path(s).exists()


def test_an_unwritable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    with pytest.raises(ConfigError, match="LEADBACK_ADMIN_TOKENS"):
        admin_tokens(_embedded(blocked))
