"""``leadback up``: the whole embedded stack on one machine, stopped cleanly by Ctrl-C.

Starts the embedded broker (a child process), creates the topics, then runs the segmenter (with
the dispatcher beside it: both need the chDB directory, which one process may hold) and
ingest as child processes of their own (``python -m leadback <service>``), each in its own
session so Ctrl-C reaches only this supervisor, which then stops them in order: ingest first
(it flushes to the broker), the segmenter next (it drains the topic into ClickHouse, since the
embedded broker keeps nothing after it stops), the broker last. Children get a parent-death
signal, so even a SIGKILL of the supervisor leaves nothing running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from leadback.broker import EmbeddedBroker, _set_parent_death_signal
from leadback.kafka.config import RUN_FILE, write_run_file
from leadback.kafka.topics import ensure_topics, leadback_topics
from leadback.logs import get_logger
from leadback.settings import Settings

log = get_logger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class Child:
    """A service child process and its restart history."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stop_timeout: float
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal,  # noqa: PLW1509 - no threads yet
        )

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time; killing", child=self.name)
            proc.kill()
            return proc.wait(5)


def _wait_ready(url: str, timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def run_up(settings: Settings, *, announce: Callable[[str], None]) -> int:
    """Run the embedded stack until SIGINT/SIGTERM; return the exit code."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    broker = EmbeddedBroker(
        port=settings.kafka.embedded_port, log_file=settings.data_dir / "logs" / "broker.log"
    )
    bootstrap = broker.start()
    children: list[Child] = []
    try:
        asyncio.run(ensure_topics(bootstrap, leadback_topics(settings.kafka)))
        write_run_file(settings.run_dir, bootstrap, os.getpid())
        env = dict(os.environ)
        env.update(
            LEADBACK_KAFKA_BOOTSTRAP=bootstrap,
            LEADBACK_KAFKA_IDEMPOTENT="false",  # tansu rejects aiokafka's InitProducerId
            LEADBACK_SEGMENTER_DRAIN_ON_SHUTDOWN="true",
            LEADBACK_DATA_DIR=str(settings.data_dir.resolve()),
        )
        env.setdefault("LEADBACK_LOG_JSON", "false")
        # Links in messages (unsubscribe, Telegram) point at this ingest unless told otherwise.
        env.setdefault(
            "LEADBACK_DISPATCHER_PUBLIC_URL",
            f"http://{settings.ingest.host}:{settings.ingest.port}",
        )
        py = [sys.executable, "-m", "leadback"]
        segmenter = Child(
            "segmenter", [*py, "segmenter"], env, settings.segmenter.shutdown_timeout_s + 15
        )
        ingest = Child("ingest", [*py, "ingest"], env, settings.ingest.shutdown_timeout_s + 10)
        children = [ingest, segmenter]  # stop order
        segmenter.start()
        ingest.start()
        base = f"http://{settings.ingest.host}:{settings.ingest.port}"
        if not _wait_ready(
            f"{base}/readyz",
            60,
            lambda: not stop.is_set() and all(c.proc and c.proc.poll() is None for c in children),
        ):
            announce("Leadback did not become ready; see the logs above.")
            return 1
        announce(_banner(settings, base, bootstrap))
        while not stop.wait(0.5):
            for child in children:
                exited = child.proc is not None and child.proc.poll() is not None
                if exited and not _restart(child):
                    announce(f"{child.name} keeps failing; stopping Leadback.")
                    return 1
        announce("Stopping Leadback: ingest, then segmenter (draining), then the broker ...")
        return 0
    finally:
        for child in children:
            code = child.stop()
            log.info("child stopped", child=child.name, code=code)
        broker.stop()
        (settings.run_dir / RUN_FILE).unlink(missing_ok=True)


def _restart(child: Child) -> bool:
    now = time.monotonic()
    child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
    code = child.proc.returncode if child.proc else None
    if len(child.restarts) >= MAX_RESTARTS:
        log.error("child exited too often", child=child.name, code=code)
        return False
    log.warning("child exited; restarting", child=child.name, code=code)
    child.restarts.append(now)
    time.sleep(min(5.0, 0.5 * 2 ** len(child.restarts)))
    child.start()
    return True


def _admin_lines(settings: Settings) -> str:
    if not settings.admin.port or not settings.audiences.enabled:
        return ""
    admin = f"http://{settings.admin.host}:{settings.admin.port}"
    token = (
        "LEADBACK_ADMIN_TOKENS"
        if settings.admin.tokens
        else settings.data_dir / "secrets" / "admin_token"
    )
    return (
        "  Audiences    leadback audiences apply -f examples/audiences.yaml\n"
        f"               admin API {admin}/docs (bearer token: {token}),"
        " changes on leadback.audiences.changes.v1\n"
    ) + _campaign_lines(settings)


def _campaign_lines(settings: Settings) -> str:
    if not settings.dispatcher.enabled:
        return ""
    return (
        "  Campaigns    leadback campaigns apply -f examples/campaigns.yaml"
        " (then: leadback campaigns status)\n"
    )


def _banner(settings: Settings, base: str, bootstrap: str) -> str:
    return (
        "\nLeadback is up.\n"
        f"  Ingest       {base}/   (API docs: {base}/docs, metrics: {base}/metrics)\n"
        f"  Pixel        curl '{base}/p.gif?site=demo&type=page_view"
        "&url=https%3A%2F%2Fshop.example%2F'\n"
        f"  JSON batch   curl -H 'Authorization: Bearer demo-write-key' -d "
        f'\'{{"batch":[{{"type":"page_view","anonymous_id":"a1"}}]}}\' {base}/v1/events\n'
        f"  Kafka        {bootstrap} (embedded; `leadback events tail` follows the events)\n"
        f"  ClickHouse   {settings.clickhouse.url} (database {settings.clickhouse.database};"
        ' after Ctrl-C: `leadback sql "SELECT ..."`)\n'
        f"{_admin_lines(settings)}"
        "  Stop         Ctrl-C\n"
    )
