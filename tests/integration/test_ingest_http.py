"""The pixel's inline HTTP path: keep-alive, pipelining, HEAD, closing, and the API beside it.

Raw sockets, so what is checked is the bytes a client receives, in order.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from leadback.ingest.pixel import GIF
from leadback.settings import Settings
from tests.conftest import WRITE_KEY, run_ingest
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def pixel(eid: str, *, method: str = "GET", extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"{method} /p.gif?site=demo&eid={eid} HTTP/{version}\r\nHost: t\r\n"
        f"User-Agent: {UA}\r\n{extra}\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 response: status line, lower-case headers, body (by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    return status, headers, body


async def test_pipelined_and_keep_alive_pixels_answer_in_order(topics: Settings) -> None:
    async with run_ingest(topics) as ingest:
        reader, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
        writer.write(pixel("h1") + pixel("h2") + pixel("h3"))  # one packet, three requests
        for _ in range(3):
            status, headers, body = await read_response(reader)
            assert status == b"HTTP/1.1 200 OK"
            assert headers[b"content-type"] == b"image/gif"
            assert body == GIF
        writer.write(pixel("h4"))  # the same connection, after the answers: still open
        status, _, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert body == GIF
        writer.close()
    events = await read_topic(topics.kafka.bootstrap, topics.kafka.topic_events)
    assert sorted(e["event_id"] for e in events) == ["h1", "h2", "h3", "h4"]


async def test_head_has_no_body_and_the_connection_goes_on(topics: Settings) -> None:
    async with run_ingest(topics) as ingest:
        reader, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
        writer.write(pixel("hd1", method="HEAD"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"content-length: 43" in head
        writer.write(pixel("hd2"))
        status, _, body = await read_response(reader)  # no stray GIF bytes before it
        assert status == b"HTTP/1.1 200 OK"
        assert body == GIF
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "what"),
    [
        (pixel("c1", extra="Connection: close\r\n"), "connection close"),
        (pixel("c2", version="1.0"), "HTTP/1.0"),
    ],
)
async def test_non_keep_alive_requests_are_answered_then_closed(
    topics: Settings, request_bytes: bytes, what: str
) -> None:
    async with run_ingest(topics) as ingest:
        reader, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
        writer.write(request_bytes)
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK", what
        assert headers[b"connection"] == b"close", what
        assert body == GIF
        assert await asyncio.wait_for(reader.read(), 10) == b"", what  # closed by the server
        writer.close()


async def test_a_pixel_pipelined_behind_an_api_call_waits_its_turn(topics: Settings) -> None:
    batch = orjson.dumps({"batch": [{"type": "page_view", "anonymous_id": "a1", "event_id": "j1"}]})
    api = (
        b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + WRITE_KEY.encode() + b"\r\n"
        b"User-Agent: " + UA.encode() + b"\r\n"
        b"Content-Length: " + str(len(batch)).encode() + b"\r\n\r\n" + batch
    )
    async with run_ingest(topics) as ingest:
        reader, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
        writer.write(api + pixel("p1"))
        status, headers, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 20"), body
        assert headers[b"content-type"].startswith(b"application/json")
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert body == GIF
        writer.close()
