"""The naive baseline: a straightforward FastAPI pixel endpoint producing each event with aiokafka.

What one would write first: build a dict from the query string and a few headers, JSON-encode
it, ``await producer.send_and_wait(...)`` (acks=all) and answer the GIF. Run it as uvicorn runs
an app by default (one process, no tuning)::

    BENCH_KAFKA_BOOTSTRAP=127.0.0.1:9092 BENCH_KAFKA_TOPIC=events uvicorn bench.naive_app:app

``bench.ingest`` measures it against nginx ``empty_gif`` and Leadback's ingest.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x01\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
TOPIC = os.environ.get("BENCH_KAFKA_TOPIC", "events")
BOOTSTRAP = os.environ.get("BENCH_KAFKA_BOOTSTRAP", "127.0.0.1:9092")

producer: AIOKafkaProducer | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global producer  # noqa: PLW0603 - the app's one producer
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:
        yield
    finally:
        await producer.stop()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/p.gif")
async def pixel(request: Request) -> Response:
    event = dict(request.query_params)
    event.update(
        event_id=str(uuid.uuid4()),
        received_at=datetime.now(UTC).isoformat(),
        user_agent=request.headers.get("user-agent", ""),
        cookie=request.headers.get("cookie", ""),
        ip=request.client.host if request.client else "",
    )
    visitor = request.cookies.get("lb_vid") or event["event_id"]
    assert producer is not None
    await producer.send_and_wait(TOPIC, json.dumps(event).encode(), key=visitor.encode())
    return Response(content=GIF, media_type="image/gif")
