"""A uvicorn server that runs inside another service's event loop."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """Leaves signals to the host process: its own handlers decide when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
