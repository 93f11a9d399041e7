"""The pixel fast path: on only with the uvicorn it was tested with, and said so at start."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import uvicorn
from structlog.testing import capture_logs

from leadback.ingest.fast_path import TESTED_UVICORN, FastPath, detect_fast_path, log_fast_path
from leadback.ingest.http import IngestHttpProtocol, missing_internals


def test_the_installed_uvicorn_runs_the_fast_path() -> None:
    fast_path = detect_fast_path()
    assert fast_path == FastPath(IngestHttpProtocol, None)
    assert fast_path.active
    assert missing_internals() == []


def test_an_untested_uvicorn_falls_back_to_its_own_protocol() -> None:
    for version in ("0.55.0", "1.0.0", "0.5.4"):
        fast_path = detect_fast_path(version)
        assert not fast_path.active
        assert fast_path.protocol == "auto"
        assert f"uvicorn {version} is untested" in (fast_path.problem or "")


def test_changed_internals_are_named() -> None:
    class Changed:
        def __init__(self) -> None:
            self.parser = self.cycle = self.pipeline = None

        def on_body(self) -> None: ...

    missing = missing_internals(Changed)
    assert "on_message_complete" in missing  # a method we override
    assert "flow" in missing  # an attribute uvicorn used to set
    assert "on_body" not in missing
    assert "parser" not in missing


def test_start_up_says_whether_the_fast_path_is_on() -> None:
    with capture_logs() as logs:
        log_fast_path(detect_fast_path())
        log_fast_path(detect_fast_path("0.99.0"))
    on, off = logs
    assert (on["log_level"], on["event"]) == ("info", "pixel fast path active")
    assert off["log_level"] == "warning"
    assert off["event"].startswith("pixel fast path off")
    assert "0.99.0" in off["reason"]


def test_the_dependency_bound_is_the_tested_version() -> None:
    pyproject: dict[str, Any] = tomllib.loads(
        (Path(__file__).parents[2] / "pyproject.toml").read_text()
    )
    [requirement] = [d for d in pyproject["project"]["dependencies"] if d.startswith("uvicorn")]
    major, minor = TESTED_UVICORN.split(".")
    assert requirement.endswith(f">={TESTED_UVICORN},<{major}.{int(minor) + 1}")
    assert uvicorn.__version__.startswith(TESTED_UVICORN + ".")
