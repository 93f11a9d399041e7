"""`leadback up` end to end: the embedded stack, a pixel, Ctrl-C, nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    pairs = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in pairs if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


async def test_up_serves_a_pixel_into_clickhouse_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = dict(os.environ)
    env.update(
        LEADBACK_DATA_DIR=str(data),
        LEADBACK_INGEST_PORT=str(port),
        LEADBACK_CLICKHOUSE_URL=f"chdb://{data / 'chdb'}",
        LEADBACK_SEGMENTER_METRICS_PORT="0",
        LEADBACK_ADMIN_PORT=str(free_port()),
    )
    out_path = tmp_path / "up.log"
    with out_path.open("wb") as out:  # a file, read while it runs: a pipe would need a reader
        proc = subprocess.Popen(
            [sys.executable, "-m", "leadback", "up"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def output() -> str:
            assert proc.poll() is None, out_path.read_text()[-3000:]
            return out_path.read_text()

        # The banner comes once the supervisor saw the stack ready and watches for Ctrl-C.
        await wait_for(
            output,
            until=lambda text: "Leadback is up" in text,
            what="the 'Leadback is up' banner",
            timeout=90,
        )
        descendants = _children_of(proc.pid)
        assert len(descendants) >= 3  # broker, segmenter, ingest
        run_file = orjson.loads((data / "run" / "broker.json").read_bytes())
        assert run_file["bootstrap"].startswith("127.0.0.1:")
        url = f"{base}/p.gif?site=demo&type=page_view&eid=up-1&url=https%3A%2F%2Fa.example%2F"
        req = urllib.request.Request(url, headers={"User-Agent": "Mozilla/5.0 Firefox/133.0"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
            assert r.read()[:6] == b"GIF89a"
        # Ctrl-C right away: ingest flushes the pixel to the broker as it stops, and the
        # segmenter drains the topic into ClickHouse before the broker goes.
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, out_path.read_text()[-3000:]
    for pid in descendants:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (data / "run" / "broker.json").exists()
    rows = subprocess.run(
        [
            sys.executable,
            "-m",
            "leadback",
            "sql",
            "SELECT count() FROM leadback.events WHERE event_id = 'up-1'",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert rows == "1"
