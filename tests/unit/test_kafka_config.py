"""Kafka settings reach both clients the same way (leadback.kafka.config), and each client
accepts the configuration it is given."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer

from leadback.kafka.config import (
    common_options,
    producer_options,
    rdkafka_config,
    rdkafka_consumer_config,
)
from leadback.settings import Settings, load_settings

BOOTSTRAP = "kafka-1:9092,kafka-2:9092"


@pytest.fixture
def secured(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in {
        "LEADBACK_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "LEADBACK_KAFKA_CLIENT_ID": "shop-leadback",
        "LEADBACK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LEADBACK_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LEADBACK_KAFKA_SASL_USERNAME": "leadback",
        "LEADBACK_KAFKA_SASL_PASSWORD": "s3cret",
        "LEADBACK_KAFKA_REQUEST_TIMEOUT_MS": "7000",
        "LEADBACK_KAFKA_COMPRESSION": "none",
    }.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def rdkafka_producer(settings: Settings, *, embedded: bool = False) -> dict[str, Any]:
    return rdkafka_config(
        settings.kafka,
        BOOTSTRAP,
        embedded=embedded,
        queue_max_events=1000,
        queue_max_bytes=1 << 20,
        stall_s=2.5,
    )


def rdkafka_consumer(settings: Settings) -> dict[str, Any]:
    return rdkafka_consumer_config(
        common_options(settings.kafka, BOOTSTRAP),
        group_id="seg",
        max_partition_fetch_bytes=1 << 20,
        fetch_max_wait_ms=100,
        session_timeout_ms=settings.kafka.consumer_session_timeout_ms(embedded_broker=False),
    )


def test_connection_and_security_reach_both_clients(secured: Settings) -> None:
    aio = producer_options(secured.kafka, BOOTSTRAP, embedded=False)
    assert aio["bootstrap_servers"] == BOOTSTRAP
    assert aio["client_id"] == "shop-leadback"
    assert aio["security_protocol"] == "SASL_SSL"
    assert aio["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (aio["sasl_plain_username"], aio["sasl_plain_password"]) == ("leadback", "s3cret")
    assert aio["request_timeout_ms"] == 7000
    assert aio["compression_type"] is None
    for rdk in (rdkafka_producer(secured), rdkafka_consumer(secured)):
        assert rdk["bootstrap.servers"] == BOOTSTRAP
        assert rdk["client.id"] == "shop-leadback"
        assert rdk["security.protocol"] == "sasl_ssl"
        assert rdk["sasl.mechanism"] == "SCRAM-SHA-512"
        assert (rdk["sasl.username"], rdk["sasl.password"]) == ("leadback", "s3cret")
    assert rdkafka_producer(secured)["request.timeout.ms"] == 7000
    assert rdkafka_producer(secured)["compression.type"] == "none"
    assert rdkafka_producer(secured)["message.timeout.ms"] == 2500
    assert rdkafka_consumer(secured)["socket.timeout.ms"] == 7000
    assert rdkafka_consumer(secured)["group.id"] == "seg"


@pytest.mark.parametrize(
    ("setting", "embedded", "expected"),
    [(None, False, True), (None, True, False), ("false", False, False), ("true", True, True)],
)
def test_idempotence_is_the_same_for_both_producers(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, embedded: bool, expected: bool
) -> None:
    if setting is None:
        monkeypatch.delenv("LEADBACK_KAFKA_IDEMPOTENT", raising=False)
    else:
        monkeypatch.setenv("LEADBACK_KAFKA_IDEMPOTENT", setting)
    settings = load_settings()
    aio = producer_options(settings.kafka, BOOTSTRAP, embedded=embedded)
    assert aio["enable_idempotence"] is expected
    assert rdkafka_producer(settings, embedded=embedded)["enable.idempotence"] is expected


def test_librdkafka_accepts_every_property_it_is_given(secured: Settings) -> None:
    # Unknown or misspelt properties make librdkafka refuse to create the client.
    plain = load_settings(kafka={"bootstrap": BOOTSTRAP})
    for settings in (plain, secured):
        Producer(rdkafka_producer(settings)).flush(0)
        Consumer(rdkafka_consumer(settings)).close()


async def test_aiokafka_accepts_every_option_it_is_given() -> None:
    # aiokafka takes its options as keyword arguments: a wrong name is a TypeError.
    kafka = load_settings(kafka={"bootstrap": BOOTSTRAP}).kafka
    producer = AIOKafkaProducer(**producer_options(kafka, BOOTSTRAP, embedded=False))
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **common_options(kafka, BOOTSTRAP))
    await producer.stop()  # never started: nothing to connect
    await consumer.stop()


def test_session_timeout_is_short_on_the_embedded_broker_and_settable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How long a dead member keeps its partitions: the least Apache Kafka accepts by default
    (6 s), 3 s on the embedded broker (which allows it), or what is set."""
    default = load_settings()
    assert default.kafka.consumer_session_timeout_ms(embedded_broker=False) == 6000
    assert default.kafka.consumer_session_timeout_ms(embedded_broker=True) == 3000
    monkeypatch.setenv("LEADBACK_KAFKA_SESSION_TIMEOUT_MS", "45000")
    custom = load_settings()
    assert custom.kafka.consumer_session_timeout_ms(embedded_broker=True) == 45000
    config = rdkafka_consumer(custom)
    assert config["session.timeout.ms"] == 45000
    assert config["heartbeat.interval.ms"] == 15000
