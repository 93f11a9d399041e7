"""Ingest benchmark against same-run anchors: nginx ``empty_gif``, a naive FastAPI app, Leadback.

Each round measures, back to back, the three servers on core 0 (the load generator ``wrk`` and
the embedded Kafka broker share core 1):

* ``nginx``: nginx ``empty_gif``, one worker (bench/nginx.py), the floor for answering a pixel;
* ``baseline``: a straightforward FastAPI endpoint producing each event with aiokafka
  (``send_and_wait``, acks=all), run as ``uvicorn bench.naive_app:app`` (bench/naive_app.py);
* ``leadback``: ``python -m leadback ingest``.

Every server takes the same ~190-byte pixel URL with a Chrome User-Agent, once without and once
with the visitor cookie (``lb_vid``): a 1 s warm-up, then a measured ``wrk -t1 -c64`` run. CPU
per request is the server's utime+stime (all threads, all processes) over the run divided by
wrk's requests; RSS is read right after the run. The baseline and Leadback write to a fresh
2-partition topic per round; afterwards the topic is consumed from the start and must hold as
many records as wrk sent requests (answered, or in flight when wrk stopped).

Prints per-round lines, medians over rounds, same-round ratios (per round, then median) and the
goals; writes the raw results to bench/results/ingest-<time>.json.

    python -m bench.ingest [--rounds 3] [--seconds 10] [--connections 64]
                           [--servers nginx,baseline,leadback] [--workers 1] [--profile]
                           [--warmup 1] [--quiet-wait 60]

``--workers N`` (N > 1) runs Leadback with N worker processes on every core (not pinned): the
multi-core figure, CPU summed over all its processes. ``--profile`` adds one measured run of
Leadback under py-spy in the last round and prints the top self-time frames. The machine may be
shared: each run first waits (``--quiet-wait`` seconds at most) until no other process uses the
server core, and a run during which one did is flagged NOISY. Needs nginx and wrk: ``make
bench-deps`` (or ``make bench``) installs them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import Consumer, TopicPartition

from bench import nginx
from bench.common import CORE_CLIENT, CORE_SERVER, pin
from bench.procs import (
    all_cores,
    core_busy,
    core_times,
    cpu_by_pid,
    cpu_delta_s,
    pin_all_threads,
    rss_by_pid,
    spawn,
    stop,
    wait_until,
)
from bench.wrk import COUNTING_SCRIPT, WrkResult, run_wrk, wrk_binary
from leadback.broker import EmbeddedBroker, free_port
from leadback.kafka.topics import ensure_topics
from leadback.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
SERVERS = ("nginx", "baseline", "leadback")
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# A product-view pixel: 190 bytes of query string (the same URL for every request).
QUERY = (
    "site=demo&type=product_view&url=https%3A%2F%2Fshop.example.com%2Fp%2Fsku-42%3Futm_source"
    "%3Dnewsletter%26utm_campaign%3Dbf&ref=https%3A%2F%2Fwww.google.com%2F&pid=sku-42&val=19.90"
    "&cur=EUR&eid=bench-42"
)
VISITOR = "0123456789abcdef0123456789abcdef"
VARIANTS: dict[str, list[str]] = {
    "no-cookie": [f"User-Agent: {CHROME}"],
    "cookie": [f"User-Agent: {CHROME}", f"Cookie: lb_vid={VISITOR}"],
}
SETTLE_S = 0.1  # after a run, before reading CPU: deferred work (batched sends) is counted
NOISY = 0.05  # flag a run whose server core was this busy with other processes
GOAL_CPU_VS_NGINX = 3.5
GOAL_VS_BASELINE = 6.0
GOAL_P99_MS = 10.0
GOAL_RSS_MB = 150.0


@dataclass
class Context:
    """What every measurement of one benchmark run shares."""

    args: argparse.Namespace
    broker: EmbeddedBroker
    tmp: Path
    script: Path
    stamp: str
    profile: dict[str, Any] | None = None


@dataclass
class Running:
    """A started server under test."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    topic: str | None = None
    invalid_topic: str | None = None
    sent: Counter[str] = field(default_factory=Counter)  # per variant, warm-ups included

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/p.gif?{QUERY}"


# -- servers -------------------------------------------------------------------------------


def _server_cores(ctx: Context, name: str) -> set[int]:
    if name == "leadback" and ctx.args.workers > 1:
        return all_cores()  # the multi-core figure: not pinned
    return {CORE_SERVER}


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(200 <= r.status < 300)
        except OSError:
            return False

    return check


def _listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def _create_topics(ctx: Context, topics: dict[str, int]) -> None:
    asyncio.run(ensure_topics(ctx.broker.bootstrap, topics))


def _delete_topics(ctx: Context, topics: list[str]) -> None:
    """Free the broker's memory (it keeps every record in memory)."""

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=ctx.broker.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(topics)
        finally:
            await admin.close()

    try:
        asyncio.run(delete())
    except Exception as exc:  # noqa: BLE001 - only memory is at stake
        print(f"  (could not delete topics {topics}: {exc})")


def start_server(ctx: Context, name: str, round_no: int) -> Running:
    """Start one server under test and wait until it answers."""
    port = free_port()
    log = ctx.tmp / f"{name}-{round_no}.log"
    rid = f"{round_no}-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ)
    topic = invalid = None
    if name == "nginx":
        cmd = nginx.command(nginx.write_config(ctx.tmp / f"nginx-{rid}", port))
        ready = _listening(port)
    elif name == "baseline":
        topic = f"bench-baseline-{rid}"
        _create_topics(ctx, {topic: 2})
        env.update(BENCH_KAFKA_BOOTSTRAP=ctx.broker.bootstrap, BENCH_KAFKA_TOPIC=topic)
        cmd = [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--port", str(port)]
        ready = _http_ok(f"http://127.0.0.1:{port}/healthz")
    else:
        topic, invalid = f"bench-leadback-{rid}", f"bench-leadback-invalid-{rid}"
        _create_topics(ctx, {topic: 2, invalid: 1})
        env.update(
            LEADBACK_KAFKA_BOOTSTRAP=ctx.broker.bootstrap,
            LEADBACK_KAFKA_IDEMPOTENT="false",
            LEADBACK_KAFKA_TOPIC_EVENTS=topic,
            LEADBACK_KAFKA_TOPIC_INVALID=invalid,
            LEADBACK_INGEST_PORT=str(port),
            LEADBACK_INGEST_WORKERS=str(ctx.args.workers),
            LEADBACK_DATA_DIR=str(ctx.tmp / f"leadback-{rid}"),
            LEADBACK_LOG_LEVEL="warning",
        )
        cmd = [sys.executable, "-m", "leadback", "ingest"]
        ready = _http_ok(f"http://127.0.0.1:{port}/readyz")
    with log.open("wb") as out:
        # uvicorn's default access log goes to stdout: discard it, keep stderr for errors.
        stdout = subprocess.DEVNULL if name == "baseline" else out
        cores = _server_cores(ctx, name)
        proc = spawn(cmd, cores=cores, env=env, stdout=stdout, stderr=out, cwd=ROOT)
    server = Running(name, proc, port, log, topic, invalid)
    try:
        wait_until(ready, 60, name, proc)
    except BaseException:
        stop(proc, 5)
        _print_log_tail(server)
        raise
    return server


def _print_log_tail(server: Running, lines: int = 30) -> None:
    try:
        text = server.log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    if text:
        print(f"--- last lines of {server.name}'s log ({server.log}):")
        print("\n".join(text))


@contextmanager
def running(ctx: Context, name: str, round_no: int) -> Iterator[Running]:
    """A server for the duration of the block; stopped (then killed) whatever happens."""
    server = start_server(ctx, name, round_no)
    try:
        yield server
    finally:
        code = stop(server.proc, 60)
        if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            print(f"  ({name} exited with code {code})")
            _print_log_tail(server)


# -- measuring -----------------------------------------------------------------------------


def _wrk(ctx: Context, server: Running, variant: str, seconds: float) -> WrkResult:
    result = run_wrk(
        server.url,
        VARIANTS[variant],
        seconds=seconds,
        connections=ctx.args.connections,
        core=CORE_CLIENT,
        script=ctx.script,
    )
    server.sent[variant] += result.sent
    return result


def _load(core: dict[str, float]) -> float:
    # A process's stime includes the interrupts handled while it ran (its own network
    # traffic), so a core's load comparable to it is busy + irq.
    return core["busy"] + core["irq"]


def wait_quiet(ctx: Context, server: Running) -> float:
    """Wait (at most ``--quiet-wait`` seconds) until nothing but the server under test uses its
    core: a shared machine runs other benchmarks. Returns the seconds waited."""
    if _server_cores(ctx, server.name) != {CORE_SERVER}:
        return 0.0
    start = time.monotonic()
    while True:
        cpu, cores, t0 = cpu_by_pid(server.proc.pid), core_times(), time.monotonic()
        time.sleep(0.5)
        window = time.monotonic() - t0
        own = cpu_delta_s(cpu, cpu_by_pid(server.proc.pid)) / window
        other = _load(core_busy(cores, core_times(), window)[CORE_SERVER]) - own
        waited = time.monotonic() - start
        if other < NOISY or waited >= ctx.args.quiet_wait:
            return waited


def measure(ctx: Context, server: Running, variant: str) -> dict[str, Any]:
    """Warm-up, then one measured wrk run; the server's CPU per request and RSS."""
    waited = wait_quiet(ctx, server)
    warm = _wrk(ctx, server, variant, ctx.args.warmup)
    before, cores_before, t0 = cpu_by_pid(server.proc.pid), core_times(), time.monotonic()
    run = _wrk(ctx, server, variant, ctx.args.seconds)
    rss = rss_by_pid(server.proc.pid)
    time.sleep(SETTLE_S)
    cpu = cpu_delta_s(before, cpu_by_pid(server.proc.pid))
    window = time.monotonic() - t0
    cores = core_busy(cores_before, core_times(), window)
    pinned = _server_cores(ctx, server.name) == {CORE_SERVER}
    return {
        "rps": run.rps,
        "p50_ms": run.p50_ms,
        "p99_ms": run.p99_ms,
        "cpu_us_per_req": cpu / max(1, run.requests) * 1e6,
        "cpu_s": cpu,
        "rss_mb": sum(rss.values()),
        "rss_largest_process_mb": max(rss.values(), default=0.0),
        "processes": len(rss),
        "cores": cores,
        # Core 0 busy with anything but the server under test (other benchmarks, the OS).
        "core_server_other": (
            max(0.0, _load(cores[CORE_SERVER]) - cpu / window) if pinned else None
        ),
        "waited_for_quiet_s": waited,
        "answered": warm.answered + run.answered,
        "unread": warm.unread + run.unread,
        "clean": warm.clean and run.clean,
        "wrk": run.as_dict(),
        "warmup": warm.as_dict(),
    }


def count_on_broker(ctx: Context, topic: str, expected: int) -> Counter[str]:
    """Records on ``topic`` per variant, by consuming it from offset 0 (never the watermarks:
    the embedded broker reports the last batch's base offset as the high watermark)."""
    consumer = Consumer(
        {
            "bootstrap.servers": ctx.broker.bootstrap,
            "group.id": f"bench-count-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    counts: Counter[str] = Counter()
    marker = VISITOR.encode()
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline, empty = time.monotonic() + 120, 0
        # Once the expected count is reached, a few more empty polls catch any extra records.
        while time.monotonic() < deadline and empty < (3 if counts.total() >= expected else 10):
            batch = consumer.consume(10000, 0.5)
            empty = 0 if batch else empty + 1
            for msg in batch:
                if msg.error() is None:
                    key, value = msg.key() or b"", msg.value() or b""
                    counts["cookie" if marker in key or marker in value else "no-cookie"] += 1
    finally:
        consumer.close()
    return counts


def run_server(ctx: Context, name: str, round_no: int, last: bool) -> dict[str, Any]:
    """Both variants of one server in one round, then what reached the broker."""
    out: dict[str, Any] = {}
    with running(ctx, name, round_no) as server:
        for variant in VARIANTS:
            out[variant] = measure(ctx, server, variant)
        if ctx.args.profile and name == "leadback" and last:
            ctx.profile = profile_run(ctx, server)
    if server.topic is not None:
        _reconcile(ctx, server, out)
    return out


def _reconcile(ctx: Context, server: Running, out: dict[str, Any]) -> None:
    assert server.topic is not None
    counts = count_on_broker(ctx, server.topic, server.sent.total())
    for variant, r in out.items():
        r["sent"] = server.sent[variant]
        r["on_broker"] = counts[variant]
        # Lost: answered with a GIF, yet not on the broker. Requests wrk sent but never saw
        # answered (in flight when it stopped) may or may not have reached the server.
        r["lost"] = max(0, r["answered"] - r["on_broker"])
        r["duplicates"] = max(0, r["on_broker"] - r["sent"])
    if server.invalid_topic is not None:
        out["invalid_records"] = count_on_broker(ctx, server.invalid_topic, 0).total()
    _delete_topics(ctx, [t for t in (server.topic, server.invalid_topic) if t])


# -- profiling -----------------------------------------------------------------------------


def profile_run(ctx: Context, server: Running) -> dict[str, Any]:
    """One more measured run (no cookie) with py-spy sampling the ingest process(es)."""
    raw = RESULTS / f"ingest-profile-{ctx.stamp}.txt"
    seconds = max(1, round(ctx.args.seconds))
    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "-o"]
    cmd += [str(raw), "-p", str(server.proc.pid), "-d", str(seconds), "-r", "250"]
    cmd += ["--nonblocking"] + (["--subprocesses"] if ctx.args.workers > 1 else [])
    spy = spawn(cmd, cores={CORE_CLIENT}, stdout=subprocess.PIPE)
    try:
        time.sleep(0.5)  # attached before the load starts
        run = _wrk(ctx, server, "no-cookie", seconds)
        spy_out, _ = spy.communicate(timeout=60)
    finally:
        stop(spy, 5)
    if spy.returncode != 0 or not raw.exists():
        print(f"py-spy failed ({spy.returncode}): {spy_out.decode(errors='replace')[-2000:]}")
        return {"error": spy_out.decode(errors="replace")[-2000:], "wrk": run.as_dict()}
    top, samples = self_time(raw.read_text())
    return {"raw": str(raw), "samples": samples, "top_self": top, "wrk": run.as_dict()}


def self_time(collapsed: str, n: int = 25) -> tuple[list[tuple[str, int]], int]:
    """Top ``n`` leaf frames of py-spy collapsed stacks (line numbers folded), and the total."""
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, num = line.rpartition(" ")
        if stack and num.isdigit():
            leaf = stack.rsplit(";", 1)[-1]
            counts[re.sub(r":\d+\)$", ")", leaf)] += int(num)
    return counts.most_common(n), counts.total()


# -- one round, medians, ratios, goals -----------------------------------------------------


def one_round(ctx: Context, round_no: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ctx.args.servers:
        result[name] = run_server(ctx, name, round_no, round_no == ctx.args.rounds)
        for variant in VARIANTS:
            print(f"round {round_no}  " + _line(name, variant, result[name][variant]))
        if result[name].get("invalid_records"):
            print(f"round {round_no}  {name}: {result[name]['invalid_records']} invalid records")
    result["ratios"] = ratios(result)
    return result


def _line(name: str, variant: str, r: dict[str, Any]) -> str:
    text = (
        f"{name:<9}{variant:<10}{r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
        f"p99 {r['p99_ms']:6.2f} ms  {r['cpu_us_per_req']:7.1f} us CPU/req  "
        f"RSS {r['rss_mb']:5.0f} MB"
    )
    if "on_broker" in r:
        text += (
            f"  answered {r['answered']} sent {r['sent']} on broker {r['on_broker']}"
            f" lost {r['lost']}"
        )
    if r["waited_for_quiet_s"] >= 1:
        text += f"  (waited {r['waited_for_quiet_s']:.0f} s for a quiet core {CORE_SERVER})"
    other = r["core_server_other"]
    if other is not None and other > NOISY:
        text += f"  NOISY: core {CORE_SERVER} {other:.0%} busy with other processes"
    if not r["clean"]:
        w = r["wrk"]
        text += f"  ERRORS non-2xx {w['non_2xx']} socket {w['socket_errors']}"
    return text


def ratios(rnd: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Same-round ratios per variant (only those whose servers ran)."""
    out: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        lb = rnd.get("leadback", {}).get(variant)
        ng = rnd.get("nginx", {}).get(variant)
        base = rnd.get("baseline", {}).get(variant)
        r: dict[str, float] = {}
        if lb and ng:
            r["cpu_vs_nginx"] = lb["cpu_us_per_req"] / ng["cpu_us_per_req"]
            r["rps_vs_nginx"] = lb["rps"] / ng["rps"]
        if lb and base:
            r["rps_vs_baseline"] = lb["rps"] / base["rps"]
            r["baseline_cpu_vs_leadback"] = base["cpu_us_per_req"] / lb["cpu_us_per_req"]
        out[variant] = r
    return out


FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_mb", "answered", "unread")


def medians(rounds: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    med: dict[str, Any] = {}
    for name in servers:
        med[name] = {}
        for variant in VARIANTS:
            rs = [r[name][variant] for r in rounds]
            keys = [k for k in (*FIGURES, "sent", "on_broker") if k in rs[0]]
            med[name][variant] = {k: statistics.median(x[k] for x in rs) for k in keys}
    med["ratios"] = {}
    for variant in VARIANTS:
        keys = rounds[0]["ratios"][variant].keys()
        med["ratios"][variant] = {
            k: statistics.median(r["ratios"][variant][k] for r in rounds) for k in keys
        }
    return med


def print_table(med: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nmedians of {args.rounds} round(s), {args.seconds:g} s per run, "
        f"wrk -t1 -c{args.connections} and the broker on core {CORE_CLIENT}"
    )
    head = (
        f"  {'server':<9}{'cookie':<10}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CPU us/req':>11}{'RSS MB':>8}{'answered':>10}{'sent':>10}{'on broker':>11}"
    )
    print(head)
    for name in args.servers:
        for variant in VARIANTS:
            m = med[name][variant]
            sent = f"{m['sent']:>10,.0f}" if "sent" in m else f"{'-':>10}"
            broker = f"{m['on_broker']:>11,.0f}" if "on_broker" in m else f"{'-':>11}"
            print(
                f"  {name:<9}{variant:<10}{m['rps']:>9,.0f}{m['p50_ms']:>8.2f}"
                f"{m['p99_ms']:>8.2f}{m['cpu_us_per_req']:>11.1f}{m['rss_mb']:>8.0f}"
                f"{m['answered']:>10,.0f}{sent}{broker}"
            )
    print("  answered: 2xx responses of warm-up + run; sent: those plus the requests in flight")
    print("  when wrk stopped (the server got and handled them too) and, with --profile, the")
    print("  profiled run. lost = answered - on broker (when > 0); duplicates = on broker - sent")
    print("  (when > 0). baseline: uvicorn defaults (access log on).")
    print(f"  {_where(args)}")


def _where(args: argparse.Namespace) -> str:
    servers = f"nginx/baseline pinned to core {CORE_SERVER}"
    if args.workers > 1:
        return (
            f"{servers}; leadback: {args.workers} worker processes NOT pinned (all cores, shared"
            " with wrk and the broker): the MULTI-CORE figure, CPU summed over all its processes"
        )
    return f"{servers}; leadback: 1 process pinned to core {CORE_SERVER}"


def goals(
    rounds: list[dict[str, Any]], med: dict[str, Any], servers: list[str], connections: int
) -> list[str]:
    """PASS/MISS lines for each goal whose servers ran."""
    lines: list[str] = []
    if "leadback" not in servers:
        return lines
    for variant in VARIANTS:
        rt = med["ratios"][variant]
        lb = med["leadback"][variant]
        if "cpu_vs_nginx" in rt:
            x = rt["cpu_vs_nginx"]
            lines.append(
                _goal(
                    x <= GOAL_CPU_VS_NGINX,
                    f"{variant}: CPU per pixel {x:.2f}x nginx (goal <= {GOAL_CPU_VS_NGINX}x)",
                )
            )
        if "baseline_cpu_vs_leadback" in rt:
            x, rps = rt["baseline_cpu_vs_leadback"], rt["rps_vs_baseline"]
            lines.append(
                _goal(
                    x >= GOAL_VS_BASELINE,
                    f"{variant}: {x:.2f}x less CPU per pixel "
                    f"than the naive baseline (goal >= {GOAL_VS_BASELINE}x); "
                    f"req/s {rps:.2f}x the baseline",
                )
            )
        p99 = lb["p99_ms"]
        lines.append(
            _goal(
                p99 < GOAL_P99_MS,
                f"{variant}: p99 {p99:.2f} ms at {connections} "
                f"connections (goal < {GOAL_P99_MS:g} ms)",
            )
        )
    lines.append(_rss_goal(rounds))
    lost = sum(r["leadback"][v]["lost"] for r in rounds for v in VARIANTS)
    lost += sum(r["leadback"][v]["duplicates"] for r in rounds for v in VARIANTS)
    sent = sum(r["leadback"][v]["answered"] for r in rounds for v in VARIANTS)
    clean = all(r["leadback"][v]["clean"] for r in rounds for v in VARIANTS)
    note = "" if clean else " (wrk saw errors: the count is not exact)"
    lines.append(
        _goal(lost == 0 and clean, f"lost or duplicated {lost} of {sent} pixels answered{note}")
    )
    return lines


def _rss_goal(rounds: list[dict[str, Any]]) -> str:
    runs = [r["leadback"][v] for r in rounds for v in VARIANTS]
    total = max(x["rss_mb"] for x in runs)
    if max(x["processes"] for x in runs) == 1:
        return _goal(
            total < GOAL_RSS_MB, f"RSS {total:.0f} MB, max over rounds (goal < {GOAL_RSS_MB:g} MB)"
        )
    largest = max(x["rss_largest_process_mb"] for x in runs)
    return _goal(
        largest < GOAL_RSS_MB,
        f"RSS {largest:.0f} MB in the largest process, max over "
        f"rounds (goal < {GOAL_RSS_MB:g} MB per process); all processes {total:.0f} MB",
    )


def _goal(ok: bool, text: str) -> str:
    return f"  {'PASS' if ok else 'MISS'}  {text}"


# -- setup, main ---------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in (
        "uvicorn",
        "aiokafka",
        "confluent-kafka",
        "fastapi",
        "starlette",
        "uvloop",
        "httptools",
        "leadback",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "-"
    return out


def _tool_version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    except OSError:
        return "-"
    return (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()[0]


def machine_info() -> dict[str, Any]:
    model = "-"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": _versions(),
        "nginx": _tool_version([nginx.nginx_binary() or "nginx", "-v"]),
        "wrk": _tool_version([wrk_binary() or "wrk", "-v"]),
        "loadavg_start": os.getloadavg(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="a subset of " + ",".join(SERVERS)
    )
    parser.add_argument("--workers", type=int, default=1, help="Leadback ingest processes")
    parser.add_argument("--profile", action="store_true", help="py-spy on Leadback, last round")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this long for other processes to leave the server core",
    )
    args = parser.parse_args()
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown or not args.servers:
        parser.error(f"--servers: choose from {','.join(SERVERS)} (got {sorted(unknown)})")
    args.servers = [s for s in SERVERS if s in args.servers]
    return args


def check_tools(servers: list[str]) -> None:
    missing = [t for t, ok in (("wrk", wrk_binary()), ("nginx", nginx.nginx_binary())) if not ok]
    if "nginx" not in servers and "nginx" in missing:
        missing.remove("nginx")
    if missing:
        sys.exit(
            f"{' and '.join(missing)} not found: run `make bench` (or `make bench-deps`), which "
            "installs nginx-light and wrk with apt-get"
        )


def main() -> None:
    args = parse_args()
    check_tools(args.servers)
    configure_logging("warning")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup on SIGTERM too
    pin(0, CORE_CLIENT)  # this process and every child it starts, unless told otherwise
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    info = machine_info()
    info["cores_busy_before"] = preflight()
    with tempfile.TemporaryDirectory(prefix="leadback-bench-ingest-") as tmp:
        script = Path(tmp) / "count.lua"
        script.write_text(COUNTING_SCRIPT)
        with EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker:
            pin_all_threads(broker.pid or 0, CORE_CLIENT)
            ctx = Context(args, broker, Path(tmp), script, stamp)
            rounds = [one_round(ctx, i) for i in range(1, args.rounds + 1)]
    report(args, info, rounds, ctx.profile, stamp)


RATIO_LABELS = {
    "cpu_vs_nginx": "Leadback CPU/req / nginx CPU/req",
    "rps_vs_nginx": "Leadback req/s / nginx req/s",
    "rps_vs_baseline": "Leadback req/s / baseline req/s",
    "baseline_cpu_vs_leadback": "baseline CPU/req / Leadback CPU/req",
}


def print_ratios(ratios: dict[str, dict[str, float]]) -> None:
    print("\nsame-round ratios (per round, then the median)")
    print(f"  {'':<38}" + "".join(f"{v:>11}" for v in VARIANTS))
    for key, label in RATIO_LABELS.items():
        if all(key in ratios[v] for v in VARIANTS):
            print(f"  {label:<38}" + "".join(f"{ratios[v][key]:>11.2f}" for v in VARIANTS))


def preflight() -> dict[int, dict[str, float]]:
    """How busy the cores are before we start (other benchmarks on a shared machine)."""
    before = core_times()
    time.sleep(1.0)
    busy = core_busy(before, core_times(), 1.0)
    hot = {c: b["busy"] + b["irq"] for c, b in busy.items() if b["busy"] + b["irq"] > NOISY * 2}
    if hot:
        text = ", ".join(f"core {c} {b:.0%}" for c, b in sorted(hot.items()))
        print(f"warning: the machine is busy before the benchmark ({text}): figures will be noisy")
    return busy


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    rounds: list[dict[str, Any]],
    profile: dict[str, Any] | None,
    stamp: str,
) -> None:
    med = medians(rounds, args.servers)
    print_table(med, args)
    print_ratios(med["ratios"])
    lines = goals(rounds, med, args.servers, args.connections)
    if lines:
        print("\ngoals (Leadback)")
        print("\n".join(lines))
    if profile and "top_self" in profile:
        print(
            f"\npy-spy: top self-time frames of {profile['samples']} samples "
            f"({profile['wrk']['rps']:,.0f} req/s while sampled); collapsed stacks "
            f"{profile['raw']}"
        )
        for frame, n in profile["top_self"]:
            print(f"  {n / profile['samples'] * 100:5.1f}%  {frame}")
    info["loadavg_end"] = os.getloadavg()
    path = RESULTS / f"ingest-{stamp}.json"
    path.write_bytes(
        orjson.dumps(
            {
                "args": vars(args),
                "machine": info,
                "rounds": rounds,
                "median": med,
                "goals": [g.strip() for g in lines],
                "profile": profile,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        )
    )
    print(f"\nraw results {path}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every server, wrk and the broker are stopped")
