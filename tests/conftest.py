"""Shared fixtures. Integration tests use the real broker process and the real ClickHouse engine.

One embedded broker per session; every test gets its own topics, consumer group and ClickHouse
database (unique names), so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import uvicorn
from pydantic import SecretStr

from leadback.broker import EmbeddedBroker
from leadback.ingest.app import IngestApp, create_app
from leadback.ingest.server import build_delivery, uvicorn_config
from leadback.kafka.topics import ensure_topics, leadback_topics
from leadback.settings import Settings, SiteSettings, load_settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

WRITE_KEY = "test-write-key-0123456789"


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def make_settings(
    broker: EmbeddedBroker, chdb_dir: Path, tmp_path: Path, unique: str
) -> Callable[..., Settings]:
    """Settings pointing at the session broker and chDB, with this test's own names."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "kafka": {
                "bootstrap": broker.bootstrap,
                "idempotent": False,
                "topic_events": f"events-{unique}",
                "topic_invalid": f"invalid-{unique}",
                "topic_changes": f"changes-{unique}",
                "topic_dead": f"dead-{unique}",
                "partitions": 3,
                "linger_ms": 2,
            },
            "clickhouse": {"url": f"chdb://{chdb_dir}", "database": f"t_{unique}"},
            "ingest": {"port": 0, "broker_stall_s": 1.0, "shutdown_timeout_s": 10},
            "segmenter": {
                "group_id": f"seg-{unique}",
                "flush_interval_ms": 100,
                "metrics_port": 0,
            },
            "admin": {"port": 0},
            "dispatcher": {"group_id": f"disp-{unique}", "metrics_port": 0},
            "sites": {
                "demo": SiteSettings(write_key=SecretStr(WRITE_KEY)),
                "shop": SiteSettings(
                    write_key=SecretStr("shop-key-0123456789abcdef"), consent_default="denied"
                ),
            },
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return load_settings(**base)

    return make


@pytest.fixture
async def topics(make_settings: Callable[..., Settings], broker: EmbeddedBroker) -> Settings:
    settings = make_settings()
    await ensure_topics(broker.bootstrap, leadback_topics(settings.kafka))
    return settings


@pytest.fixture
async def store(topics: Settings) -> AsyncIterator[ClickHouseStore]:
    s = ClickHouseStore(topics.clickhouse)
    yield s
    with contextlib.suppress(Exception):
        await s.command(f"DROP DATABASE IF EXISTS {topics.clickhouse.database}")
    await s.close()


@pytest.fixture
async def db(store: ClickHouseStore) -> ClickHouseStore:
    """``store`` with the project's migrations applied."""
    await migrate(store)
    return store


def store_examples(n: int) -> Any:
    """Hypothesis settings for ``n`` examples against a real store: no deadline (statements
    take their time), and the function-scoped store shared by the examples."""
    return hypothesis.settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[
            hypothesis.HealthCheck.function_scoped_fixture,
            hypothesis.HealthCheck.too_slow,
        ],
    )


class RunningIngest:
    def __init__(self, app: IngestApp, server: uvicorn.Server, port: int) -> None:
        self.app = app
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def run_ingest(settings: Settings) -> AsyncIterator[RunningIngest]:
    """The real ingest app on a real uvicorn server, in this process, on a free port."""
    app = create_app(settings, build_delivery(settings))
    config = uvicorn_config(settings, app)
    config.port = 0
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningIngest(app, server, port)
    finally:
        server.should_exit = True
        await task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sql_in_subprocess(chdb_path: Path, sql: str) -> str:
    """Query a chDB directory another (now stopped) process wrote: one engine per process."""
    code = (
        "import clickhouse_connect,sys;"
        f"c=clickhouse_connect.get_client(dsn='chdb://{chdb_path}');"
        "print(c.command(sys.argv[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, sql], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip()
