"""Settings: environment names, secrets from files, production refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadback.errors import ConfigError
from leadback.settings import load_settings


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
