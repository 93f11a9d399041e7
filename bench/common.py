"""Pieces the benchmarks share: core pinning, waiting for a service, the CPU model."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import urllib.request
from pathlib import Path

CORE_SERVER, CORE_CLIENT = 0, 1


def pin(pid: int, core: int) -> None:
    """Run ``pid`` (0: this process) on one core only, where the machine has two."""
    pin_cores(pid, {core})


def pin_cores(pid: int, cores: set[int]) -> None:
    """Run ``pid`` (0: this process) on ``cores``, where the machine has two or more."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid, cores)


async def wait_ready(base: str, timeout_s: float = 30.0) -> None:
    """Poll ``<base>/readyz`` until it answers."""
    for _ in range(int(timeout_s * 10)):
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1):
                return
        except OSError:
            await asyncio.sleep(0.1)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), printed with results: figures depend on it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "-"


def apply_audiences_offline(
    chdb: Path, document: str, env_extra: dict[str, str] | None = None
) -> None:
    """Write audience definitions into a chDB directory no process holds yet (``env_extra``:
    more settings, e.g. ``LEADBACK_SITES`` when the audiences are not on the demo site)."""
    env = {
        **os.environ,
        "LEADBACK_CLICKHOUSE_URL": f"chdb://{chdb}",
        "LEADBACK_LOG_LEVEL": "warning",
        **(env_extra or {}),
    }
    subprocess.run(
        [sys.executable, "-m", "leadback", "audiences", "apply", "--offline", "-f", "-"],
        input=document.encode(),
        env=env,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
