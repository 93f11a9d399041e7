"""Pipeline throughput on this machine: pixels -> ingest -> Kafka -> segmenter -> ClickHouse.

Each round: a fresh topic; an ingest process (pinned to core 0) takes pixels from a keep-alive
load generator (this process, core 1, with the broker) for a fixed time; every answered pixel
must reach the broker; then a segmenter (in this process, pinned to core 0) consumes the topic
into a fresh chDB database and is timed until every event is a row. Prints per-round figures and
medians, and writes the raw results to bench/results/pipeline-<time>.json.

    python -m bench.pipeline [--rounds 3] [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.common import CORE_CLIENT, CORE_SERVER, pin, wait_ready
from bench.loadgen import run_load
from leadback.broker import EmbeddedBroker, free_port
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.kafka.topics import ensure_topics
from leadback.logs import configure_logging
from leadback.segmenter.service import build_segmenter
from leadback.settings import ClickHouseSettings, KafkaSettings, SegmenterSettings, Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# About 190 bytes of query string, like a real product-view pixel.
QUERY = (
    "site=demo&type=product_view&url=https%3A%2F%2Fshop.example.com%2Fp%2Fsku-{n}%3Futm_source"
    "%3Dnewsletter%26utm_campaign%3Dbf&ref=https%3A%2F%2Fwww.google.com%2F&pid=sku-{n}&val=19.90"
    "&cur=EUR&eid=b{r}-{n}"
)
COOKIE = "lb_vid=0123456789abcdef0123456789abcdef"


def _request(round_id: str, host: str) -> Any:
    def make(n: int) -> bytes:
        cookie = f"Cookie: {COOKIE}\r\n" if n % 2 else ""
        return (
            f"GET /p.gif?{QUERY.format(n=n, r=round_id)} HTTP/1.1\r\nHost: {host}\r\n"
            f"User-Agent: {CHROME}\r\nAccept: image/*\r\n{cookie}\r\n"
        ).encode()

    return make


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "_total "):
                return float(line.split()[-1])
    return 0.0


async def one_round(
    broker: EmbeddedBroker, workdir: Path, *, seconds: float, connections: int
) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:8]
    topic = f"bench-events-{rid}"
    await ensure_topics(broker.bootstrap, {topic: 6, f"bench-invalid-{rid}": 1})
    port = free_port()
    env = dict(os.environ)
    env.update(
        LEADBACK_KAFKA_BOOTSTRAP=broker.bootstrap,
        LEADBACK_KAFKA_IDEMPOTENT="false",
        LEADBACK_KAFKA_TOPIC_EVENTS=topic,
        LEADBACK_KAFKA_TOPIC_INVALID=f"bench-invalid-{rid}",
        LEADBACK_INGEST_PORT=str(port),
        LEADBACK_DATA_DIR=str(workdir / rid),
        LEADBACK_LOG_LEVEL="warning",
    )
    ingest = subprocess.Popen([sys.executable, "-m", "leadback", "ingest"], env=env)
    pin(ingest.pid, CORE_SERVER)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    cpu_before = _proc_cpu(ingest.pid)
    load = await run_load(
        "127.0.0.1",
        port,
        _request(rid, f"127.0.0.1:{port}"),
        connections=connections,
        seconds=seconds,
    )
    cpu_used = _proc_cpu(ingest.pid) - cpu_before
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        delivered = _metric(f"{base}/metrics", "leadback_delivery_delivered")
        if delivered >= load.requests:
            break
        await asyncio.sleep(0.2)
    ingest.terminate()
    ingest.wait(60)

    store = ClickHouseStore(
        ClickHouseSettings(url=f"chdb://{workdir / 'chdb'}", database=f"bench_{rid}")
    )
    await migrate(store)
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap=broker.bootstrap, topic_events=topic, topic_invalid=f"bench-invalid-{rid}"
        ),
        segmenter=SegmenterSettings(group_id=f"bench-{rid}", metrics_port=0),
    )
    invalid = KafkaRecordProducer(
        **producer_options(settings.kafka, broker.bootstrap, embedded=True)
    )
    await invalid.start()
    seg = build_segmenter(settings, store, broker.bootstrap, invalid)
    pin(0, CORE_SERVER)
    stop = asyncio.Event()
    task = asyncio.create_task(seg.run(stop))
    # Time the consuming, not the consumer-group join (a few seconds on the embedded broker).
    join_start = time.perf_counter()
    while not seg.assignment and time.perf_counter() - join_start < 60:
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    while seg.stats.events_inserted < load.requests and time.perf_counter() - t0 < 300:
        await asyncio.sleep(0.05)
    seg_seconds = time.perf_counter() - t0
    stop.set()
    await task
    pin(0, CORE_CLIENT)
    rows = int((await store.query(f"SELECT count() FROM {store.database}.events"))[0][0])
    await store.command(f"DROP DATABASE {store.database}")
    await store.close()
    await invalid.stop()
    return {
        "pixels_answered": load.requests,
        "errors": load.errors,
        "ingest_rps": load.rate,
        "ingest_p50_ms": load.percentile(0.5) * 1000,
        "ingest_p99_ms": load.percentile(0.99) * 1000,
        "ingest_cpu_us_per_request": cpu_used / max(1, load.requests) * 1e6,
        "delivered": int(delivered),
        "rows_in_clickhouse": rows,
        "segmenter_events_per_s": rows / seg_seconds,
        "segmenter_seconds": seg_seconds,
    }


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    configure_logging("warning")
    pin(0, CORE_CLIENT)
    results = []
    with tempfile.TemporaryDirectory(prefix="leadback-bench-") as tmp, EmbeddedBroker() as broker:
        pin(broker.pid or 0, CORE_CLIENT)
        for i in range(args.rounds):
            r = await one_round(
                broker, Path(tmp), seconds=args.seconds, connections=args.connections
            )
            results.append(r)
            print(
                f"round {i + 1}: ingest {r['ingest_rps']:,.0f} req/s "
                f"(p50 {r['ingest_p50_ms']:.2f} ms, p99 {r['ingest_p99_ms']:.2f} ms, "
                f"{r['ingest_cpu_us_per_request']:.0f} us CPU/req), "
                f"answered {r['pixels_answered']} delivered {r['delivered']} "
                f"rows {r['rows_in_clickhouse']}; segmenter {r['segmenter_events_per_s']:,.0f} ev/s"
            )
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    lost = sum(r["pixels_answered"] - r["rows_in_clickhouse"] for r in results)
    print("\nmedian of", len(results), "rounds")
    print(
        f"  ingest     {med['ingest_rps']:>10,.0f} pixels/s  p50 {med['ingest_p50_ms']:.2f} ms"
        f"  p99 {med['ingest_p99_ms']:.2f} ms  {med['ingest_cpu_us_per_request']:.0f} us CPU/pixel"
        f"  ({args.connections} connections, one core)"
    )
    print(f"  segmenter  {med['segmenter_events_per_s']:>10,.0f} events/s into ClickHouse (chDB)")
    print(f"  lost       {lost} (answered pixels that are not rows)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"pipeline-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_bytes(
        orjson.dumps(
            {"args": vars(args), "rounds": results, "median": med}, option=orjson.OPT_INDENT_2
        )
    )
    print(f"  raw results {path}")


if __name__ == "__main__":
    asyncio.run(main())
