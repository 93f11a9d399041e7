"""The in-process engine's threads follow the cores the process may run on."""

from __future__ import annotations

import os

import pytest

from leadback.store import client


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_a_process_pinned_to_fewer_cores_runs_that_many_query_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})
    assert client._chdb_settings()["max_threads"] == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert "max_threads" not in client._chdb_settings()
    assert client._chdb_settings()["max_query_size"] == 64 * 1024 * 1024
