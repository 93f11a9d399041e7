"""The producer port and its aiokafka implementation (error translation happens here)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from leadback.errors import BrokerUnavailableError


class RecordProducer(Protocol):
    """What the delivery queue needs from a Kafka producer."""

    async def start(self) -> None: ...

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        """Hand a record to the client's batcher; the future resolves when the broker acks.

        May wait (back-pressure) when the client's buffers are full. The future's exception,
        if any, is a :class:`BrokerUnavailableError`.
        """
        ...

    async def flush(self) -> None: ...

    async def probe(self, timeout: float) -> bool:
        """Whether the cluster answers a metadata request within ``timeout`` seconds."""
        ...

    async def stop(self) -> None: ...


class KafkaRecordProducer:
    """:class:`RecordProducer` on aiokafka."""

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
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailableError(f"cannot start the Kafka producer: {exc}") from exc

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        try:
            inner: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"send to {topic} failed: {exc}") from exc
        outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        inner.add_done_callback(lambda f: _translate(f, outer))
        return outer

    async def flush(self) -> None:
        try:
            await self._producer.flush()
        except KafkaError as exc:
            raise BrokerUnavailableError(f"flush failed: {exc}") from exc

    async def probe(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                ok: bool = await self._producer.client.fetch_all_metadata() is not None
                return ok
        except (TimeoutError, KafkaError, OSError):
            return False

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
