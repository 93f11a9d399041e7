"""The aiokafka producer, for topics where records are rare (invalid records, tools, tests).

Hot paths use librdkafka instead (:mod:`leadback.kafka.rdkafka`; the choice is drawn in
:mod:`leadback.kafka.config`, which also builds the options, :func:`producer_options`).
aiokafka errors are translated here; a broker that refuses the idempotent producer's
InitProducerId raises a :class:`ConfigError` naming the setting to change.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from leadback.errors import BrokerUnavailableError
from leadback.kafka.config import idempotence_refused


class RecordProducer(Protocol):
    """A producer that sends one record and reports its acknowledgement."""

    async def start(self) -> None: ...

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """Hand a record to the client's batcher; the future resolves when the broker acks.

        May wait (back-pressure) when the client's buffers are full. The future's exception,
        if any, is a :class:`BrokerUnavailableError`.
        """
        ...

    async def stop(self) -> None: ...


class KafkaRecordProducer:
    """:class:`RecordProducer` on aiokafka; ``options`` from
    :func:`leadback.kafka.config.producer_options`."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._client: AIOKafkaProducer | None = None

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._client is None:
            # aiokafka binds to the running loop: create it in start(), not in __init__.
            self._client = AIOKafkaProducer(**self._options)
        return self._client

    async def start(self) -> None:
        """Connect; with idempotence on, also get a producer id (InitProducerId).

        Raises :class:`BrokerUnavailableError` if the cluster cannot be reached, and
        :class:`ConfigError` if the broker refuses the idempotent producer.
        """
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            # Reaching the cluster fails with a connection error; any other error at start is
            # the broker's answer to InitProducerId (sent only when idempotence is on).
            if self._options.get("enable_idempotence") and not isinstance(
                exc, KafkaConnectionError
            ):
                bootstrap = str(self._options.get("bootstrap_servers"))
                raise idempotence_refused(bootstrap, str(exc)) from exc
            raise BrokerUnavailableError(f"cannot start the Kafka producer: {exc}") from exc

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        try:
            inner: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"send to {topic} failed: {exc}") from exc
        outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        inner.add_done_callback(lambda f: _translate(f, outer))
        return outer

    async def stop(self) -> None:
        if self._client is None:
            return
        try:
            await self._client.stop()
        except KafkaError as exc:
            raise BrokerUnavailableError(f"producer stop failed: {exc}") from exc


def _translate(inner: asyncio.Future[Any], outer: asyncio.Future[Any]) -> None:
    if outer.done():
        return
    if inner.cancelled():
        outer.set_exception(BrokerUnavailableError("send cancelled"))
        return
    exc = inner.exception()
    if exc is None:
        outer.set_result(inner.result())
    else:
        err = BrokerUnavailableError(f"delivery failed: {exc!r}")
        err.__cause__ = exc
        outer.set_exception(err)
