"""The broker frozen (SIGSTOP) under load: pixels keep answering, nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from leadback.broker import EmbeddedBroker
from leadback.ingest.pixel import GIF
from leadback.settings import Settings
from tests.conftest import free_port
from tests.integration.helpers import read_topic, wait_for

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 Safari/605.1.15"
REQUEST_TIMEOUT_S = 5.0
PIXELS = 200  # answered in each phase: before, during and after the outage


async def readyz(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]] | None:
    """``/readyz``'s status and body, or None while ingest does not answer yet."""
    try:
        r = await client.get("/readyz")
    except httpx.TransportError:
        return None
    return r.status_code, r.json()


async def wait_ready(client: httpx.AsyncClient, want: int, what: str, timeout: float) -> None:
    await wait_for(
        lambda: readyz(client),
        until=lambda got: got is not None and got[0] == want,
        what=f"/readyz {want} ({what})",
        timeout=timeout,
    )


async def test_pause_broker_under_load_loses_nothing(
    topics: Settings, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        LEADBACK_KAFKA_BOOTSTRAP=topics.kafka.bootstrap,
        LEADBACK_KAFKA_IDEMPOTENT="false",
        LEADBACK_KAFKA_TOPIC_EVENTS=topics.kafka.topic_events,
        LEADBACK_KAFKA_TOPIC_INVALID=topics.kafka.topic_invalid,
        LEADBACK_KAFKA_REQUEST_TIMEOUT_MS=str(int(REQUEST_TIMEOUT_S * 1000)),
        LEADBACK_INGEST_PORT=str(port),
        LEADBACK_INGEST_BROKER_STALL_S="1",
        LEADBACK_DATA_DIR=str(topics.data_dir),
        LEADBACK_LOG_LEVEL="info",
    )
    log_path = tmp_path / "ingest.log"
    with log_path.open("wb") as log:  # a file: a full pipe would block the process
        proc = subprocess.Popen([sys.executable, "-m", "leadback", "ingest"], env=env, stderr=log)
    ok_ids: list[str] = []
    stop = asyncio.Event()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=5,
            limits=httpx.Limits(max_connections=16),
        ) as client:
            await wait_ready(client, 200, "ingest started", 30)

            async def worker(w: int) -> None:
                i = 0
                while not stop.is_set():
                    eid = f"w{w}-{i}"
                    r = await client.get(
                        f"/p.gif?site=demo&type=page_view&eid={eid}"
                        "&url=https%3A%2F%2Fshop.example%2Fcart",
                        headers={"user-agent": UA},
                    )
                    assert r.status_code == 200
                    assert r.content == GIF
                    ok_ids.append(eid)
                    i += 1

            async def answered(what: str) -> None:
                start = len(ok_ids)
                await wait_for(
                    lambda: len(ok_ids) - start,
                    until=lambda n: n >= PIXELS,
                    what=f"{PIXELS} pixels answered {what}",
                )

            async def outage() -> None:
                try:
                    await answered("before the outage")
                    broker.pause()
                    paused_at = time.monotonic()
                    try:
                        await wait_ready(client, 503, "broker paused", 15)
                        await answered("during the outage")
                        await wait_for(
                            lambda: readyz(client),
                            until=lambda got: got is not None and got[1]["spool_records"] > 0,
                            what="pixels answered during the outage in the disk spool",
                        )
                        # The scenario, not a wait for an event: the outage outlasts the
                        # client's request timeout, so requests in flight time out too.
                        await asyncio.sleep(
                            max(0.0, paused_at + REQUEST_TIMEOUT_S + 1 - time.monotonic())
                        )
                    finally:
                        broker.resume()
                    await wait_ready(client, 200, "spool replayed after the broker came back", 60)
                    await answered("after the outage")
                finally:
                    stop.set()

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(outage())
                for w in range(8):
                    tasks.create_task(worker(w))
    finally:
        broker.resume()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log_path.read_bytes()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit here.
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()[-3000:]
    assert b"delivery closed" in err, err.decode()[-3000:]
    delivered = {
        e["event_id"] for e in await read_topic(topics.kafka.bootstrap, topics.kafka.topic_events)
    }
    missing = set(ok_ids) - delivered
    assert not missing, f"{len(missing)} of {len(ok_ids)} answered pixels never reached Kafka"
