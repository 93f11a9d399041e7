"""Settings: environment names, secrets from files, production refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadback.errors import ConfigError
from leadback.settings import Settings, load_settings


def test_defaults_give_the_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("LEADBACK_"):
            monkeypatch.delenv(name)
    s = load_settings()
    assert s.kafka.is_embedded
    assert s.clickhouse.is_chdb
    assert s.kafka.producer_idempotent(embedded_broker=True) is False
    assert s.kafka.producer_idempotent(embedded_broker=False) is True
    assert "demo" in s.sites
    # The embedded broker serves one segmenter: one partition, one events insert per round.
    assert s.kafka.topic_partitions == 1


def test_partitions_default_to_six_on_a_kafka_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADBACK_KAFKA_PARTITIONS", raising=False)
    monkeypatch.setenv("LEADBACK_KAFKA_BOOTSTRAP", "kafka-1:9092")
    assert load_settings().kafka.topic_partitions == 6
    monkeypatch.setenv("LEADBACK_KAFKA_PARTITIONS", "12")
    assert load_settings().kafka.topic_partitions == 12


def test_environment_variables_reach_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADBACK_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("LEADBACK_KAFKA_LINGER_MS", "20")
    monkeypatch.setenv("LEADBACK_CLICKHOUSE_URL", "http://ch:8123")
    monkeypatch.setenv("LEADBACK_INGEST_COOKIE_DOMAIN", ".shop.example")
    monkeypatch.setenv("LEADBACK_SEGMENTER_BATCH_MAX_EVENTS", "1234")
    monkeypatch.setenv("LEADBACK_LOG_LEVEL", "debug")
    s = load_settings()
    assert s.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert s.kafka.linger_ms == 20
    assert s.clickhouse.url == "http://ch:8123"
    assert not s.clickhouse.is_chdb
    assert s.ingest.cookie_domain == ".shop.example"
    assert s.segmenter.batch_max_events == 1234
    assert s.log_level == "debug"


def test_secrets_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "leadback_clickhouse_password").write_text("s3cret\n")
    key_file = tmp_path / "elsewhere"
    key_file.write_text("sasl-pw")
    monkeypatch.setenv("LEADBACK_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("LEADBACK_KAFKA_SASL_PASSWORD_FILE", str(key_file))
    s = load_settings()
    assert s.clickhouse.password.get_secret_value() == "s3cret"
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "sasl-pw"
    assert "s3cret" not in repr(s)


def test_site_registry_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    reg = tmp_path / "sites.yaml"
    reg.write_text("shop:\n  write_key: shop-key-0123456789\n  consent_default: denied\n")
    monkeypatch.setenv("LEADBACK_SITE_REGISTRY", str(reg))
    s = load_settings()
    assert set(s.sites) == {"shop"}
    assert s.sites["shop"].consent_default == "denied"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LEADBACK_ENVIRONMENT": "production"}, "LEADBACK_KAFKA_BOOTSTRAP"),
        (
            {"LEADBACK_ENVIRONMENT": "production", "LEADBACK_KAFKA_BOOTSTRAP": "k:9092"},
            "demo write key",
        ),
        ({"LEADBACK_CLICKHOUSE_URL": "postgres://x"}, "chdb://"),
        ({"LEADBACK_INGEST_TRUSTED_PROXIES": '["not-a-cidr"]'}, "trusted_proxies"),
    ],
)
def test_unsafe_or_bad_settings_fail_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        load_settings()


# --- identity: the keys that encrypt contact details ----------------------------------------

KEY_A = "3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
KEY_B = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def _keys(s: Settings) -> list[str]:
    return [k.get_secret_value() for k in s.identity.contact_keys]


@pytest.mark.parametrize(
    "value",
    [f"{KEY_A},{KEY_B}", f" {KEY_A} , {KEY_B} ", f'["{KEY_A}", "{KEY_B}"]', f"{KEY_A}\n{KEY_B}\n"],
)
def test_contact_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LEADBACK_IDENTITY_CONTACT_KEYS", value)
    monkeypatch.setenv("LEADBACK_IDENTITY_DEFAULT_PHONE_REGION", "DE")
    s = load_settings()
    assert _keys(s) == [KEY_A, KEY_B]
    assert s.identity.default_phone_region == "DE"
    assert KEY_A not in repr(s)


def test_contact_keys_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "contact_keys"
    key_file.write_text(f"{KEY_A},{KEY_B}\n")
    monkeypatch.setenv("LEADBACK_IDENTITY_CONTACT_KEYS_FILE", str(key_file))
    assert _keys(load_settings()) == [KEY_A, KEY_B]


def test_contact_keys_from_the_secrets_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "leadback_identity_contact_keys").write_text(KEY_B + "\n")
    monkeypatch.setenv("LEADBACK_SECRETS_DIR", str(tmp_path))
    assert _keys(load_settings()) == [KEY_B]


def test_no_contact_keys_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADBACK_IDENTITY_CONTACT_KEYS", raising=False)
    s = load_settings()
    assert s.identity.contact_keys == []
    assert s.identity.default_phone_region is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LEADBACK_IDENTITY_CONTACT_KEYS": "not-a-key-at-all"}, "key 1 is not a Fernet key"),
        ({"LEADBACK_IDENTITY_CONTACT_KEYS": f"{KEY_A},tooshort"}, "key 2 is not a Fernet key"),
        ({"LEADBACK_IDENTITY_CONTACT_KEYS": '["unterminated'}, "key 1 is not a Fernet key"),
        ({"LEADBACK_IDENTITY_DEFAULT_PHONE_REGION": "us"}, "default_phone_region"),
        ({"LEADBACK_IDENTITY_DEFAULT_PHONE_REGION": "ZZ"}, "not a region"),
        (
            {
                "LEADBACK_ENVIRONMENT": "production",
                "LEADBACK_KAFKA_BOOTSTRAP": "k:9092",
                "LEADBACK_SITES": '{"shop": {"write_key": "shop-key-0123456789abcdef"}}',
                "LEADBACK_ADMIN_TOKENS": "admin-token-0123456789abcdef",
            },
            "production needs LEADBACK_IDENTITY_CONTACT_KEYS",
        ),
    ],
)
def test_bad_identity_settings_fail_at_start_without_echoing_secrets(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("LEADBACK_CLICKHOUSE_PASSWORD", "pw-never-shown")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings()
    assert "pw-never-shown" not in str(info.value)
    assert "not-a-key-at-all" not in str(info.value)
    assert "tooshort" not in str(info.value)
    assert "shop-key" not in str(info.value)


def test_production_with_contact_keys_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADBACK_ENVIRONMENT", "production")
    monkeypatch.setenv("LEADBACK_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("LEADBACK_SITES", '{"shop": {"write_key": "shop-key-0123456789abcdef"}}')
    monkeypatch.setenv("LEADBACK_ADMIN_TOKENS", "admin-token-0123456789abcdef")
    monkeypatch.setenv("LEADBACK_IDENTITY_CONTACT_KEYS", KEY_A)
    monkeypatch.setenv("LEADBACK_DISPATCHER_TOKEN_KEYS", "t" * 32)
    assert _keys(load_settings()) == [KEY_A]


def test_production_without_token_keys_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADBACK_ENVIRONMENT", "production")
    monkeypatch.setenv("LEADBACK_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("LEADBACK_SITES", '{"shop": {"write_key": "shop-key-0123456789abcdef"}}')
    monkeypatch.setenv("LEADBACK_ADMIN_TOKENS", "admin-token-0123456789abcdef")
    monkeypatch.setenv("LEADBACK_IDENTITY_CONTACT_KEYS", KEY_A)
    monkeypatch.setenv("LEADBACK_DISPATCHER_TOKEN_KEYS", "too-short")
    with pytest.raises(ConfigError, match="LEADBACK_DISPATCHER_TOKEN_KEYS"):
        load_settings()
