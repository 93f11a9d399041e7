"""Follow a topic without joining a group (``leadback events tail``)."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from leadback.errors import BrokerUnavailableError
from leadback.kafka.config import common_options, resolve_bootstrap
from leadback.settings import Settings


async def tail(
    settings: Settings,
    topic: str,
    show: Callable[[bytes | None, bytes], None],
    *,
    from_beginning: bool,
    count: int,
) -> None:
    """Call ``show`` for each record of every partition of ``topic``; stop after ``count``."""
    bootstrap, _ = resolve_bootstrap(settings)
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, **common_options(settings.kafka, bootstrap)
    )
    seen = 0
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        while not count or seen < count:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    show(record.key, record.value)
                    seen += 1
                    if count and seen >= count:
                        return
    except KafkaError as exc:
        raise BrokerUnavailableError(f"cannot follow {topic}: {exc}") from exc
    finally:
        await consumer.stop()
