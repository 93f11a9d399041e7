"""Run ``wrk`` on the client core and read its figures.

wrk stops at the deadline with up to one request in flight per connection: those were sent
(the server handles them, and an ingest server produces their events) but are not in wrk's
request count. A small Lua script counts the requests wrk put on the wire, so the events a
server must have produced are known exactly: ``sent`` (= answered + unread at the stop).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import spawn

# One request string built once per thread (wrk.format); request() only counts and returns it.
# Before sending, wrk calls request() once on thread 1 to check what it returns
# (script_verify_request): that call sends nothing, so thread 1 starts its count at -1.
COUNTING_SCRIPT = """\
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
local req
function init(args)
  sent = (id == 1) and -1 or 0
  req = wrk.format()
end
function request()
  sent = sent + 1
  return req
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + t:get("sent")
  end
  io.write(string.format("BENCH-SENT %d\\n", total))
end
"""

TIMEOUT_S = 30
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = re.compile(r"([\d.]+)(us|ms|s|m|h)$")


@dataclass
class WrkResult:
    """One wrk run: ``requests`` completed responses, ``sent`` requests put on the wire."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    sent: int

    @property
    def answered(self) -> int:
        """Responses with a 2xx/3xx status."""
        return self.requests - self.non_2xx

    @property
    def unread(self) -> int:
        """Requests sent whose response wrk did not read before it stopped."""
        return self.sent - self.requests

    @property
    def clean(self) -> bool:
        """No error status and no connection error (wrk reconnects after one, and the request
        it was on may or may not have reached the server): ``sent`` is exactly what the
        server got. A timeout is only a response slower than ``--timeout``."""
        errors = self.socket_errors
        return self.non_2xx == 0 and not (errors["connect"] or errors["read"] or errors["write"])

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "answered": self.answered, "unread": self.unread}


def wrk_binary() -> str | None:
    """Path of wrk, or None."""
    return shutil.which("wrk")


def to_ms(text: str) -> float:
    """A wrk duration (``850.00us``, ``1.23ms``, ``1.02s``) in milliseconds."""
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse(output: str) -> WrkResult:
    """Figures from ``wrk --latency -s <counting script>`` output."""
    done = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    sent = re.search(r"^BENCH-SENT (\d+)", output, re.M)
    if not (done and rps and p50 and p99 and sent):
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    kinds = ("connect", "read", "write", "timeout")
    return WrkResult(
        requests=int(done.group(1)),
        seconds=to_ms(done.group(2)) / 1000,
        rps=float(rps.group(1)),
        p50_ms=to_ms(p50.group(1)),
        p99_ms=to_ms(p99.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors={k: int(sock.group(i + 1)) if sock else 0 for i, k in enumerate(kinds)},
        sent=int(sent.group(1)),
    )


def run_wrk(
    url: str,
    headers: list[str],
    *,
    seconds: float,
    connections: int,
    core: int,
    script: Path,
) -> WrkResult:
    """``wrk -t1 -c<connections> -d<seconds>s --latency --timeout 30s`` pinned to ``core``."""
    cmd = [wrk_binary() or "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    # wrk leaves responses slower than --timeout (2 s by default) out of its percentiles.
    cmd += ["--timeout", f"{TIMEOUT_S}s"]
    for h in headers:
        cmd += ["-H", h]
    cmd += ["-s", str(script), url]
    proc = spawn(cmd, cores={core}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out.decode(errors='replace')}")
    return parse(out.decode(errors="replace"))
