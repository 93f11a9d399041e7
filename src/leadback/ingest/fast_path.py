"""Whether the pixel's inline fast path (:mod:`leadback.ingest.http`) can run here.

The fast path subclasses uvicorn's httptools protocol and relies on its internals, which
uvicorn does not promise to keep. It runs only with httptools importable, on the uvicorn minor
version it was tested with (:data:`TESTED_UVICORN`, the bound in ``pyproject.toml``), and with
every method and attribute it uses still in place. Otherwise ingest serves the pixel through
uvicorn's own protocol and ASGI: the same answers, at about three times the CPU per pixel.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import uvicorn

from leadback.logs import get_logger

log = get_logger(__name__)

#: The uvicorn ``major.minor`` the fast path was tested with; keep in step with pyproject.toml.
TESTED_UVICORN: Final = "0.54"


@dataclass(frozen=True, slots=True)
class FastPath:
    """The HTTP protocol for uvicorn, and why the fast path is off (None when on)."""

    protocol: type[asyncio.Protocol] | str
    problem: str | None

    @property
    def active(self) -> bool:
        return self.problem is None


def detect_fast_path(uvicorn_version: str = uvicorn.__version__) -> FastPath:
    """The fast path when it can run, else uvicorn's own protocol (``"auto"``) and why."""
    minor = ".".join(uvicorn_version.split(".")[:2])
    if minor != TESTED_UVICORN:
        return FastPath(
            "auto",
            f"uvicorn {uvicorn_version} is untested (tested: {TESTED_UVICORN}.x)",
        )
    try:
        from leadback.ingest.http import IngestHttpProtocol, missing_internals
    except ImportError as exc:  # httptools, or uvicorn's httptools protocol, is missing
        return FastPath("auto", f"uvicorn's httptools protocol cannot be imported: {exc}")
    missing = missing_internals()
    if missing:
        return FastPath("auto", "uvicorn's HttpToolsProtocol changed: no " + ", ".join(missing))
    return FastPath(IngestHttpProtocol, None)


def log_fast_path(fast_path: FastPath) -> None:
    """Say at start-up whether pixels take the fast path: info if so, a warning if not."""
    if fast_path.active:
        log.info("pixel fast path active", uvicorn=uvicorn.__version__)
    else:
        log.warning(
            "pixel fast path off: pixels go through ASGI, about 3x the CPU per pixel",
            reason=fast_path.problem,
            uvicorn=uvicorn.__version__,
        )
