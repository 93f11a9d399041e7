"""Create Leadback's topics if they do not exist (embedded broker, tests, first deploys)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from leadback.errors import BrokerUnavailableError
from leadback.logs import get_logger
from leadback.settings import KafkaSettings

log = get_logger(__name__)

TOPIC_ALREADY_EXISTS = 36


def leadback_topics(kafka: KafkaSettings) -> dict[str, int]:
    """Every topic Leadback uses, with the partition count it creates them with."""
    return {
        kafka.topic_events: kafka.topic_partitions,
        kafka.topic_invalid: max(1, kafka.topic_partitions // 2),
        kafka.topic_changes: kafka.topic_partitions,
        kafka.topic_dead: 1,
    }


async def ensure_topics(
    bootstrap: str, topics: dict[str, int], *, timeout_ms: int = 15_000
) -> None:
    """Create the missing topics; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()],
            timeout_ms=timeout_ms,
        )
        for name, code, message in _errors(response):
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise BrokerUnavailableError(f"cannot create topic {name}: {code} {message}")
        log.info("topics ready", topics=sorted(topics))
    except KafkaError as exc:
        raise BrokerUnavailableError(f"cannot create topics: {exc}") from exc
    finally:
        await admin.close()


def _errors(response: object) -> list[tuple[str, int, str | None]]:
    out: list[tuple[str, int, str | None]] = []
    for item in getattr(response, "topic_errors", []):
        name, code = item[0], item[1]
        message = item[2] if len(item) > 2 else None
        out.append((name, code, message))
    return out
