"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

httpx costs more CPU per request than the server under test; this sends a fixed request on C
connections for a fixed time and records each response's latency. Responses are parsed only as
far as Content-Length, which is all a pixel needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(len(data) * q))]


async def _connection(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    stop_at: float,
    result: LoadResult,
    counter: list[int],
    pace_s: float | None = None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    next_at = time.perf_counter()
    try:
        while time.perf_counter() < stop_at:
            if pace_s is not None:
                next_at += pace_s
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            n = counter[0]
            counter[0] += 1
            t0 = time.perf_counter()
            writer.write(make_request(n))
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - t0)
            if head.startswith(b"HTTP/1.1 200"):
                result.requests += 1
            else:
                result.errors += 1
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
) -> LoadResult:
    """Send requests on ``connections`` keep-alive connections for ``seconds``; at most
    ``rate`` requests per second in all when given (a steady load), else as fast as answered."""
    pace = connections / rate if rate else None
    result = LoadResult()
    counter = [0]
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _connection(host, port, make_request, start + seconds, result, counter, pace)
            for _ in range(connections)
        )
    )
    result.seconds = time.perf_counter() - start
    return result
