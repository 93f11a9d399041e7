"""The broker frozen (SIGSTOP) for 10 s under load: pixels stay fast, nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time

import httpx
import pytest

from leadback.broker import EmbeddedBroker
from leadback.settings import Settings
from tests.conftest import free_port
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 Safari/605.1.15"


async def wait_ready(client: httpx.AsyncClient, want: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if (await client.get("/readyz")).status_code == want:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never answered {want} within {timeout}s")


async def test_pause_broker_under_load_loses_nothing(
    topics: Settings, broker: EmbeddedBroker, tmp_path: object
) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        LEADBACK_KAFKA_BOOTSTRAP=topics.kafka.bootstrap,
        LEADBACK_KAFKA_IDEMPOTENT="false",
        LEADBACK_KAFKA_TOPIC_EVENTS=topics.kafka.topic_events,
        LEADBACK_KAFKA_TOPIC_INVALID=topics.kafka.topic_invalid,
        LEADBACK_KAFKA_REQUEST_TIMEOUT_MS="5000",
        LEADBACK_INGEST_PORT=str(port),
        LEADBACK_INGEST_BROKER_STALL_S="1",
        LEADBACK_DATA_DIR=str(topics.data_dir),
        LEADBACK_LOG_LEVEL="info",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "leadback", "ingest"], env=env, stderr=subprocess.PIPE
    )
    latencies: list[float] = []
    ok_ids: list[str] = []
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=5,
            limits=httpx.Limits(max_connections=16),
        ) as client:
            await wait_ready(client, 200, 30)
            stop_at = time.monotonic() + 14

            async def worker(w: int) -> None:
                i = 0
                while time.monotonic() < stop_at:
                    eid = f"w{w}-{i}"
                    t0 = time.perf_counter()
                    r = await client.get(
                        f"/p.gif?site=demo&type=page_view&eid={eid}"
                        "&url=https%3A%2F%2Fshop.example%2Fcart",
                        headers={"user-agent": UA},
                    )
                    latencies.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    ok_ids.append(eid)
                    i += 1

            async def outage() -> float:
                await asyncio.sleep(2)
                broker.pause()
                try:
                    return await wait_ready(client, 503, 8)
                finally:
                    await asyncio.sleep(max(0.0, 10 - 1))
                    broker.resume()

            results = await asyncio.gather(outage(), *(worker(w) for w in range(8)))
            not_ready_after = results[0]
            recovered_in = await wait_ready(client, 200, 60)
    finally:
        broker.resume()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit here.
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()[-3000:]
    assert b"delivery closed" in err, err.decode()[-3000:]
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"\noutage test: {len(latencies)} pixels, p50 {p50 * 1000:.2f} ms, "
        f"p99 {p99 * 1000:.2f} ms, not ready {not_ready_after:.1f}s after pause, "
        f"recovered {recovered_in:.1f}s after resume"
    )
    assert p99 < 0.25, f"pixel p99 {p99 * 1000:.1f} ms during the outage"
    delivered = {
        e["event_id"] for e in await read_topic(topics.kafka.bootstrap, topics.kafka.topic_events)
    }
    missing = set(ok_ids) - delivered
    assert not missing, f"{len(missing)} of {len(ok_ids)} answered pixels never reached Kafka"
