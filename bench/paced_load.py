"""A steady load of varied pixel requests sent by ``wrk``, paced to a rate.

The freshness benchmark's load shares the machine with the stack it measures. Sent from Python
(:mod:`bench.loadgen`: asyncio streams, a request built per call) it took about 0.45 of a core
at 5,000 pixels/s on a 2-core machine, as much as the ingest service it loads: CPU a real
deployment never pays, since its visitors' browsers are elsewhere. Here the requests are built
in Python before the load starts (the same :class:`~bench.freshness.LoadMaker` traffic: many
visitors, user agents, sessions, no fixed ids), written to a file, and ``wrk`` sends them from
a small Lua script: one connection sends one request at a time, as a browser does, and a
schedule shared by the connections holds the rate (a request late behind a slow response is
sent at once, so the rate is kept over the run, as wrk2 does; the first request of each
connection goes at the start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bench.loadgen import LoadResult
from bench.wrk import parse, wrk_binary

#: Requests in the file are separated by NUL (they hold CR LF; a pixel request never holds NUL).
SEPARATOR = b"\0"

PACED_SCRIPT = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } lb_timespec;
int clock_gettime(int clk_id, lb_timespec *tp);
]]
local ts = ffi.new("lb_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local reqs = {}
local n, i = 0, 0
local interval, next_at
sent = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  for r in data:gmatch("([^%z]+)") do
    n = n + 1
    reqs[n] = r
  end
  interval = 1000 / tonumber(args[2])
  i = tonumber(args[3]) % n
  -- wrk calls request() once before the load to check it: that call sends nothing.
  sent = -1
end

function request()
  i = i % n + 1
  sent = sent + 1
  return reqs[i]
end

function delay()
  local t = now_ms()
  if next_at == nil then next_at = t end
  next_at = next_at + interval
  local d = next_at - t
  if d <= 0 then return 0 end
  return math.floor(d)
end

function done(summary, latency, requests)
  io.write(string.format("BENCH-SENT %d\\n", sent))
end
"""


def write_requests(path: Path, make_request: Callable[[int], bytes], count: int) -> Path:
    """``count`` requests of ``make_request`` into ``path`` (NUL-separated)."""
    with path.open("wb") as out:
        for n in range(count):
            out.write(make_request(n))
            out.write(SEPARATOR)
    return path


async def paced_load(
    port: int,
    requests: Path,
    *,
    rate: float,
    seconds: float,
    start: int = 0,
    connections: int = 64,
) -> LoadResult:
    """Send the requests of ``requests`` from the ``start``-th on (cycled if the run needs
    more) to ``127.0.0.1:port`` at ``rate`` per second for ``seconds``; the responses counted
    as wrk reports them (its latencies are left out: the freshness is what is measured)."""
    script = requests.with_suffix(".lua")
    if not script.exists():
        script.write_text(PACED_SCRIPT)
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed (make bench-deps)")
    # Enough connections for the schedule at the rate: each waits for its slot.
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
        "--",
        str(requests),
        f"{rate:g}",
        str(start),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    figures = parse(text)
    errors = figures.non_2xx + sum(
        figures.socket_errors[k] for k in ("connect", "read", "write", "timeout")
    )
    return LoadResult(requests=figures.answered, errors=errors, seconds=figures.seconds)
