"""uvicorn's httptools protocol with the pixel answered inline, without ASGI.

Serving ``GET /p.gif`` through ASGI costs about 28 µs of CPU per request on this machine in
uvicorn alone (a scope dict, a request-response object, a task, two ``send`` awaits), three
times nginx's whole cost. The pixel needs none of it: its handler never awaits (the producer
queues records in C), so this protocol answers it from the parser's callbacks and writes the
prebuilt response bytes. Every other request, and a pixel pipelined behind one, goes through
uvicorn's own ASGI machinery unchanged (FastAPI for the rest of the API).

Depends on uvicorn's ``HttpToolsProtocol`` internals; the version range is pinned in
``pyproject.toml``, :mod:`leadback.ingest.fast_path` decides at start-up whether this protocol
can run (and logs it), and tests/integration cover keep-alive, pipelining and the API path.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Final

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from leadback.ingest.pixel import PIXEL_PATH, PixelHandler, raw_response

PIXEL_TARGET = PIXEL_PATH.encode()

#: What this module overrides or relies on in uvicorn's ``HttpToolsProtocol``: methods, and
#: attributes its ``__init__`` or ``connection_made`` sets (``url`` is reset by our
#: ``on_message_begin`` and filled by uvicorn's ``on_url``). :mod:`leadback.ingest.fast_path`
#: checks them at start-up so a uvicorn that changed them is noticed, not run.
USED_METHODS: Final = (
    "on_message_begin",
    "on_url",
    "on_headers_complete",
    "on_header",
    "on_body",
    "on_message_complete",
    "data_received",
    "shutdown",
    "resume_writing",
    "timeout_keep_alive_handler",
)
USED_ATTRIBUTES: Final = (
    "app",
    "loop",
    "parser",
    "cycle",
    "pipeline",
    "headers",
    "expect_100_continue",
    "server_state",
    "transport",
    "flow",
    "client",
    "scheme",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
)


def missing_internals(base: type = HttpToolsProtocol) -> list[str]:
    """The names in :data:`USED_METHODS` and :data:`USED_ATTRIBUTES` that ``base``
    (uvicorn's ``HttpToolsProtocol``) no longer has; empty when all are there."""
    # Attributes live on instances; the attribute names a method uses are in its co_names.
    assigned: set[str] = set()
    for method in ("__init__", "connection_made"):
        code = getattr(getattr(base, method, None), "__code__", None)
        if code is not None:
            assigned.update(code.co_names)
    missing = [name for name in USED_METHODS if not callable(getattr(base, name, None))]
    missing += [name for name in USED_ATTRIBUTES if name not in assigned]
    return missing


class ResponseBatch:
    """Pixel responses of one loop iteration, written together at its end.

    Answers go out within the same iteration either way; written back to back, the peers'
    wake-ups coalesce (on loopback, waking a sleeping client from ``write`` cost about a
    third of a pixel's CPU).
    """

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ResponseBatch] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[IngestHttpProtocol, bytes, bool]] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> ResponseBatch:
        """The batch of ``loop`` (one per event loop)."""
        batch = cls._by_loop.get(loop)
        if batch is None:
            batch = cls._by_loop[loop] = cls(loop)
        return batch

    def add(self, protocol: IngestHttpProtocol, data: bytes, keep_alive: bool) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append((protocol, data, keep_alive))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for protocol, data, keep_alive in pending:
            protocol.write_response(data, keep_alive)


class IngestHttpProtocol(HttpToolsProtocol):
    """HTTP/1.1 for ingest: the pixel inline, the rest as uvicorn does it."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        handler = getattr(self.app, "pixel", None)
        self._pixel = handler if isinstance(handler, PixelHandler) else None
        self._in_pixel = False
        self._arm_keep_alive = False
        self._paused_for_pixel = False
        self._writes = ResponseBatch.of(self.loop)

    # Parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The ASGI scope is built only for requests that are not the pixel.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._in_pixel = False

    def on_headers_complete(self) -> None:
        url = self.url
        if (
            self._pixel is not None
            and url.startswith(PIXEL_TARGET)
            and (len(url) == len(PIXEL_TARGET) or url[len(PIXEL_TARGET)] == 0x3F)  # '?'
            and self.parser.get_method() in (b"GET", b"HEAD")
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
        ):
            self._in_pixel = True
            return
        # Not the pixel: build uvicorn's scope now, around what the parser collected.
        headers = self.headers
        super().on_message_begin()
        self.url = url
        self.headers.extend(headers)
        self.expect_100_continue = any(
            name == b"expect" and value.lower() == b"100-continue" for name, value in headers
        )
        super().on_headers_complete()

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, minus the Expect check, which only ASGI requests need (done below).
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        if not self._in_pixel:  # a pixel's body, if a client sends one, is ignored
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._in_pixel:
            super().on_message_complete()
            return
        self._in_pixel = False
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        head = parser.get_method() == b"HEAD"
        url = self.url
        set_cookie = self._pixel.handle(  # type: ignore[union-attr]
            url[len(PIXEL_TARGET) + 1 :],
            self.headers,
            self.client[0] if self.client else None,
            self.scheme == "https",
            head=head,
        )
        self.server_state.total_requests += 1
        self._writes.add(
            self, raw_response(set_cookie, head=head, keep_alive=keep_alive), keep_alive
        )
        if keep_alive:
            self._arm_keep_alive = True

    def write_response(self, data: bytes, keep_alive: bool) -> None:
        """Write one pixel response (called by the loop's :class:`ResponseBatch`)."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        if not keep_alive:
            transport.close()
        elif self.flow.write_paused and not self._paused_for_pixel:
            # A client that sends pixels without reading the answers: stop reading it.
            self._paused_for_pixel = True
            self.flow.pause_reading()

    # Transport callbacks -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._arm_keep_alive:
            # One keep-alive timer per read, not per pipelined pixel.
            self._arm_keep_alive = False
            if (
                self.timeout_keep_alive_task is None
                and not self.transport.is_closing()
                and (self.cycle is None or self.cycle.response_complete)
            ):
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def shutdown(self) -> None:
        # Answers of this iteration go out before uvicorn closes idle connections.
        self._writes.flush()
        super().shutdown()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._paused_for_pixel:
            self._paused_for_pixel = False
            self.flow.resume_reading()
