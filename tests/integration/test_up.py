"""`leadback up` end to end: the embedded stack, a pixel, Ctrl-C, nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port

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


def test_up_serves_a_pixel_into_clickhouse_and_stops_cleanly(tmp_path: Path) -> None:
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "leadback", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "stack never became ready"
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        descendants = _children_of(proc.pid)
        assert len(descendants) >= 3  # broker, segmenter, ingest
        run_file = orjson.loads((data / "run" / "broker.json").read_bytes())
        assert run_file["bootstrap"].startswith("127.0.0.1:")
        url = f"{base}/p.gif?site=demo&type=page_view&eid=up-1&url=https%3A%2F%2Fa.example%2F"
        req = urllib.request.Request(url, headers={"User-Agent": "Mozilla/5.0 Firefox/133.0"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
            assert r.read()[:6] == b"GIF89a"
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, _ = proc.communicate(timeout=120)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "Leadback is up" in text
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
