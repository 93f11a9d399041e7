"""A broker that refuses the idempotent producer: the error says what to set.

The bundled tansu broker refuses aiokafka's InitProducerId (it answers ``[Error -1]
UnknownError``), so it stands in for any such broker. librdkafka's side is in
test_rdkafka_producer.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leadback.broker import EmbeddedBroker
from leadback.errors import ConfigError
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.settings import KafkaSettings

pytestmark = pytest.mark.integration


async def test_an_idempotent_aiokafka_producer_names_the_setting(broker: EmbeddedBroker) -> None:
    kafka = KafkaSettings(bootstrap=broker.bootstrap, idempotent=True)
    producer = KafkaRecordProducer(**producer_options(kafka, broker.bootstrap, embedded=False))
    with pytest.raises(ConfigError, match="LEADBACK_KAFKA_IDEMPOTENT=false") as refused:
        await producer.start()
    assert "does not accept idempotent producers" in str(refused.value)
    assert "InitProducerId" in str(refused.value)


def test_leadback_segmenter_against_the_plain_broker_says_what_to_set(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """As a new user would: ``leadback segmenter`` with LEADBACK_KAFKA_BOOTSTRAP pointing at a
    plain tansu broker and idempotence at its default (on for a bootstrap address)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADBACK_")}
    env.update(
        LEADBACK_KAFKA_BOOTSTRAP=broker.bootstrap,
        LEADBACK_DATA_DIR=str(tmp_path / "data"),
        LEADBACK_CLICKHOUSE_URL=f"chdb://{tmp_path / 'chdb'}",
        LEADBACK_SEGMENTER_METRICS_PORT="0",
        LEADBACK_ADMIN_PORT="0",
    )
    run = subprocess.run(
        [sys.executable, "-m", "leadback", "segmenter"],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    error = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, run.stderr
    assert "LEADBACK_KAFKA_IDEMPOTENT=false" in error[0]
    assert broker.bootstrap in error[0]
