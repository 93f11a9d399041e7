"""Audience benchmarks: the cost of 20 live audiences in the segmenter, and freshness.

1. **Cost**: a topic preloaded with realistic events (three sites, thousands of visitors, a mix
   of page views, product views, carts, checkouts, purchases, leads and identifies over the last
   week) is consumed into a fresh chDB database by the segmenter (in this process) with no
   audience, then with 20 audiences; events/s of each and their ratio, per round.
2. **Freshness**: ingest and segmenter run as processes (as ``leadback up`` runs them) with the
   20 audiences plus a probe audience; a steady pixel load runs while probe pixels qualify new
   visitors; the time from each probe's HTTP response to its ``enter`` on the change topic.

    python -m bench.audiences [--events 200000] [--rounds 3] [--seconds 20] [--rate 1000]

Prints a table and writes raw results to bench/results/audiences-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer

from bench.common import CORE_CLIENT, CORE_SERVER, apply_audiences_offline, pin, wait_ready
from bench.loadgen import run_load
from leadback.audiences.repository import AudienceRepository
from leadback.audiences.rules import parse_audiences
from leadback.broker import EmbeddedBroker, free_port
from leadback.events import empty_click_ids, empty_utm, event_key, format_ts
from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.kafka.topics import ensure_topics
from leadback.logs import configure_logging
from leadback.segmenter.service import build_engine, build_segmenter, change_producer
from leadback.settings import (
    AudienceSettings,
    ClickHouseSettings,
    KafkaSettings,
    SegmenterSettings,
    Settings,
)
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate

# Partitions of the events topic in the freshness run: what `leadback up` creates.
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "2"))
SITES = {"shop": 0.6, "news": 0.25, "saas": 0.15}
VISITORS_PER_SITE = 4000
MIX = [
    ("page_view", 0.50),
    ("product_view", 0.25),
    ("add_to_cart", 0.09),
    ("remove_from_cart", 0.02),
    ("checkout", 0.05),
    ("purchase", 0.03),
    ("lead", 0.02),
    ("signup", 0.015),
    ("identify", 0.015),
    ("custom", 0.01),
]
CATEGORIES = ["shoes", "bags", "coats", "hats", "socks"]
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)

TEMPLATES = [
    "{then_not: {did: {event: add_to_cart, within: 7d}, then: {event: purchase}}}",
    "{all: [{then_not: {did: {event: add_to_cart, within: 7d}, then: {event: purchase}}},"
    " {idle: 1h}]}",
    "{all: [{did: {event: product_view, count: 2, within: 3d}}, {not: {did: {event: purchase}}}]}",
    "{all: [{did: {event: purchase}}, {idle: 3d}]}",
    "{did: {event: purchase, within: 30d}}",
    "{all: [{did: {event: checkout, within: 1d, where: [{property: value, op: gt, value: 100}]}},"
    " {not: {did: {event: purchase, within: 1d}}}]}",
    "{all: [{did: {event: page_view, where: [{field: url, op: contains, value: /contact}]}},"
    " {not: {did: {event: lead}}}]}",
    "{did: {event: product_view, where: [{property: category, op: eq, value: shoes}], within: 7d}}",
    "{did: {event: product_view, where: [{property: category, op: in, value: [bags, hats]}]}}",
    "{did: {event: page_view, count: 10, within: 7d}}",
    "{seen_within: 1d}",
    "{all: [{did: {event: signup}}, {not: {did: {event: purchase}}}]}",
    "{sequence: {steps: [{event: product_view}, {event: add_to_cart}, {event: checkout}],"
    " within: 1d}}",
    "{then_not: {did: {event: checkout}, then: {event: purchase}, within: 30m}}",
    "{any: [{did: {event: lead}}, {did: {event: signup}}]}",
    "{did: {event: [add_to_cart, checkout], within: 2d, where: [{property: value, op: gte,"
    " value: 50}]}}",
    "{all: [{did: {event: page_view, within: 7d}}, {not: {did: {event: page_view, within: 1d}}}]}",
    "{did: {event: remove_from_cart, within: 7d}}",
    "{did: {event: custom, name: video_play}}",
]


def audiences_yaml(sites: list[str], n: int = 20) -> str:
    """``n`` audiences spread over ``sites``: the 19 templates and one product-level one."""
    docs: list[dict[str, Any]] = [
        {
            "id": f"a{i:02d}",
            "site": sites[i % len(sites)],
            "rule": yaml.safe_load(TEMPLATES[i % len(TEMPLATES)]),
        }
        for i in range(n - 1)
    ]
    docs.append(
        {
            "id": "viewed_not_bought",
            "site": sites[0],
            "products": {"property": "product_id"},
            "rule": yaml.safe_load(TEMPLATES[2]),
        }
    )
    return yaml.safe_dump(docs)


def make_events(n: int, now: float, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of realistic canonical events over the last week."""
    rng = random.Random(seed)
    sites = list(SITES)
    types = [t for t, _ in MIX]
    weights = [w for _, w in MIX]
    out = []
    for i in range(n):
        site = rng.choices(sites, weights=[SITES[s] for s in sites])[0]
        visitor = f"{site[:2]}{rng.randrange(VISITORS_PER_SITE):05d}{'0' * 22}"
        etype = rng.choices(types, weights=weights)[0]
        at = now - rng.random() * 7 * 86_400
        product = f"sku-{rng.randrange(500)}"
        props: dict[str, Any] = {}
        if etype in ("product_view", "add_to_cart", "remove_from_cart"):
            props = {"product_id": product, "category": rng.choice(CATEGORIES), "value": 20.0}
        elif etype in ("checkout", "purchase"):
            props = {
                "value": round(rng.uniform(10, 300), 2),
                "currency": "EUR",
                "items": [{"product_id": product, "quantity": 1}],
            }
        user_id = f"user-{visitor[:9]}" if etype == "identify" else None
        event = {
            "schema_version": 1,
            "event_id": f"bench-{seed}-{i}",
            "site_id": site,
            "visitor_id": visitor,
            "type": etype,
            "name": "video_play" if etype == "custom" else None,
            "sent_at": None,
            "received_at": format_ts(at),
            "anonymous_id": visitor,
            "user_id": user_id,
            "traits": {},
            "url": f"https://{site}.example/{'contact' if rng.random() < 0.03 else 'p'}/{i % 97}",
            "referrer": "https://www.google.com/",
            "utm": empty_utm(),
            "click_ids": empty_click_ids(),
            "properties": props,
            "context": {"user_agent": CHROME, "ip": "203.0.113.0", "language": "en"},
            "consent": {
                "status": "granted",
                "purposes": ["all"],
                "gpc": False,
                "dnt": False,
                "tracking": True,
            },
            "bot": False,
            "source": "pixel",
        }
        out.append((event_key(site, visitor), orjson.dumps(event)))
    return out


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def preload(broker: EmbeddedBroker, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaRecordProducer(
        **producer_options(
            KafkaSettings(bootstrap=broker.bootstrap), broker.bootstrap, embedded=True
        )
    )
    await producer.start()
    futures = [await producer.send(topic, k, v) for k, v in records]
    for f in futures:
        await f
    await producer.stop()


async def consume_once(
    broker: EmbeddedBroker, workdir: Path, topic: str, n: int, *, audiences: str | None
) -> dict[str, Any]:
    """Consume the preloaded topic into a fresh database; events/s from partition assignment."""
    rid = uuid.uuid4().hex[:8]
    store = ClickHouseStore(
        ClickHouseSettings(url=f"chdb://{workdir / 'chdb'}", database=f"cost_{rid}")
    )
    await migrate(store)
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap=broker.bootstrap,
            topic_events=topic,
            topic_invalid=f"{topic}-invalid",
            topic_changes=f"{topic}-changes-{rid}",
        ),
        segmenter=SegmenterSettings(group_id=f"cost-{rid}", metrics_port=0),
        audiences=AudienceSettings(enabled=audiences is not None),
    )
    producer = KafkaRecordProducer(
        **producer_options(settings.kafka, broker.bootstrap, embedded=True)
    )
    await producer.start()
    engine = None
    changes = None
    if audiences is not None:
        repo = AudienceRepository(store)
        for spec in parse_audiences(yaml.safe_load(audiences)):
            await repo.put(spec)
        changes = change_producer(settings, broker.bootstrap, embedded=True)
        engine = build_engine(settings, store, changes)
        await engine.start()
    seg = build_segmenter(settings, store, broker.bootstrap, producer, engine)
    pin(0, CORE_SERVER)
    stop = asyncio.Event()
    task = asyncio.create_task(seg.run(stop))
    join = time.perf_counter()
    while not seg.assignment and time.perf_counter() - join < 60:
        await asyncio.sleep(0.01)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    while seg.stats.events_inserted < n and time.perf_counter() - t0 < 600:
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stop.set()
    await task
    pin(0, CORE_CLIENT)
    members = 0
    if engine is not None:
        rows = await store.query(
            f"SELECT count() FROM {store.database}.memberships FINAL WHERE state = 'in'"
        )
        members = int(rows[0][0])
    await store.command(f"DROP DATABASE {store.database}")
    await store.close()
    await producer.stop()
    if changes is not None:
        changes.close()
    return {
        "events": seg.stats.events_inserted,
        "seconds": seconds,
        "events_per_s": seg.stats.events_inserted / seconds,
        "events_per_cpu_s": seg.stats.events_inserted / max(cpu, 1e-9),
        "batches": seg.stats.batches_inserted,
        "members": members,
        "changes": engine.stats.changes if engine else 0,
    }


PROBE = """
- id: probe
  site: demo
  rule: {did: {event: lead, where: [{field: url, op: contains, value: /probe/}]}}
"""


async def freshness(
    broker: EmbeddedBroker, workdir: Path, *, seconds: float, rate: float
) -> dict[str, Any]:
    """Probe pixels under a steady load: pixel response -> enter on the change topic."""
    rid = uuid.uuid4().hex[:8]
    names = {
        "events": f"fr-events-{rid}",
        "invalid": f"fr-invalid-{rid}",
        "changes": f"fr-changes-{rid}",
    }
    await ensure_topics(
        broker.bootstrap, {names["events"]: PARTITIONS, names["invalid"]: 1, names["changes"]: 6}
    )
    chdb = workdir / f"fresh-{rid}"
    audiences = audiences_yaml(["demo"]) + PROBE
    apply_audiences_offline(chdb, audiences)
    port = free_port()
    env = dict(os.environ)
    env.update(
        LEADBACK_KAFKA_BOOTSTRAP=broker.bootstrap,
        LEADBACK_KAFKA_IDEMPOTENT="false",
        LEADBACK_KAFKA_TOPIC_EVENTS=names["events"],
        LEADBACK_KAFKA_TOPIC_INVALID=names["invalid"],
        LEADBACK_KAFKA_TOPIC_CHANGES=names["changes"],
        LEADBACK_CLICKHOUSE_URL=f"chdb://{chdb}",
        LEADBACK_SEGMENTER_GROUP_ID=f"fr-{rid}",
        LEADBACK_SEGMENTER_METRICS_PORT="0",
        LEADBACK_ADMIN_PORT="0",
        LEADBACK_INGEST_PORT=str(port),
        LEADBACK_DATA_DIR=str(workdir / rid),
        LEADBACK_LOG_LEVEL="warning",
    )
    py = [sys.executable, "-m", "leadback"]
    segmenter = subprocess.Popen([*py, "segmenter"], env=env)
    ingest = subprocess.Popen([*py, "ingest"], env=env)
    pin(segmenter.pid, CORE_SERVER)
    pin(ingest.pid, CORE_SERVER)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base)
    consumer = AIOKafkaConsumer(
        names["changes"],
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    arrived: dict[str, float] = {}
    evaluated: dict[str, float] = {}
    sent_wall: dict[str, float] = {}

    async def watch() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    change = orjson.loads(r.value)
                    if change["audience_id"] == "probe" and change["change"] == "enter":
                        arrived.setdefault(change["visitor_id"], now)
                        evaluated.setdefault(change["visitor_id"], _wall(change["at"]))

    watcher = asyncio.create_task(watch())
    # Warm up: the consumer group joins (a few seconds on the embedded broker).
    sent: dict[str, float] = {}

    def probe_request(n: int) -> bytes:
        vid = f"{rid}{n:024d}"[:32]
        return (
            f"GET /p.gif?site=demo&type=lead&aid={vid}&url=https%3A%2F%2Fx.example%2Fprobe%2F"
            f" HTTP/1.1\r\nHost: x\r\nUser-Agent: {CHROME}\r\n\r\n"
        ).encode()

    def load_request(n: int) -> bytes:
        kind = ("page_view", "product_view", "add_to_cart")[n % 3]
        return (
            f"GET /p.gif?site=demo&type={kind}&aid=load{n % 5000:028d}&pid=sku-{n % 300}"
            f"&url=https%3A%2F%2Fx.example%2Fp%2F{n % 50} HTTP/1.1\r\nHost: x\r\n"
            f"User-Agent: {CHROME}\r\n\r\n"
        ).encode()

    async def probes(until: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while time.perf_counter() < until:
            writer.write(probe_request(n))
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(43)
            assert head.startswith(b"HTTP/1.1 200")
            sent[f"{rid}{n:024d}"[:32]] = time.perf_counter()
            sent_wall[f"{rid}{n:024d}"[:32]] = time.time()
            n += 1
            await asyncio.sleep(0.1)
        writer.close()

    await run_load("127.0.0.1", port, load_request, connections=4, seconds=6, rate=rate)
    t_end = time.perf_counter() + seconds
    load = asyncio.create_task(
        run_load("127.0.0.1", port, load_request, connections=4, seconds=seconds, rate=rate)
    )
    await probes(t_end)
    load_result = await load
    deadline = time.perf_counter() + 15
    while len(arrived) < len(sent) and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    watcher.cancel()
    await consumer.stop()
    ingest.terminate()
    segmenter.terminate()
    ingest.wait(60)
    segmenter.wait(60)
    lat = sorted((arrived[v] - t) * 1000 for v, t in sent.items() if v in arrived)
    to_eval = sorted((evaluated[v] - t) * 1000 for v, t in sent_wall.items() if v in evaluated)
    return {
        "probes": len(sent),
        "arrived": len(lat),
        "p50_ms": lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "max_ms": lat[-1] if lat else float("nan"),
        "load_rps": load_result.rate,
        "pixel_to_evaluation_p50_ms": to_eval[len(to_eval) // 2] if to_eval else float("nan"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness load time")
    parser.add_argument(
        "--rates", default="500,1000", help="steady pixels/s of the freshness load, comma-separated"
    )
    args = parser.parse_args()
    configure_logging("warning")
    pin(0, CORE_CLIENT)
    now = time.time()
    records = make_events(args.events, now)
    audiences = audiences_yaml(list(SITES))
    cost: list[dict[str, Any]] = []
    fresh: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="leadback-bench-") as tmp, EmbeddedBroker() as broker:
        pin(broker.pid or 0, CORE_CLIENT)
        topic = f"cost-{uuid.uuid4().hex[:8]}"
        await ensure_topics(broker.bootstrap, {topic: 6, f"{topic}-invalid": 1})
        await preload(broker, topic, records)
        for i in range(args.rounds):
            none = await consume_once(broker, Path(tmp), topic, args.events, audiences=None)
            twenty = await consume_once(broker, Path(tmp), topic, args.events, audiences=audiences)
            ratio = twenty["events_per_s"] / none["events_per_s"]
            cost.append({"none": none, "twenty": twenty, "ratio": ratio})
            print(
                f"round {i + 1}: segmenter {none['events_per_s']:,.0f} ev/s without audiences, "
                f"{twenty['events_per_s']:,.0f} ev/s with 20 ({ratio:.2f}x; "
                f"{twenty['members']} members, {twenty['changes']} changes)"
            )
        for rate in [float(r) for r in args.rates.split(",")]:
            for i in range(args.rounds):
                f = await freshness(broker, Path(tmp), seconds=args.seconds, rate=rate)
                f["rate"] = rate
                fresh.append(f)
                print(
                    f"round {i + 1}: freshness p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, "
                    f"max {f['max_ms']:.0f} ms ({f['arrived']}/{f['probes']} probes, "
                    f"load {f['load_rps']:,.0f} pixels/s; pixel->evaluation p50 "
                    f"{f['pixel_to_evaluation_p50_ms']:.0f} ms)"
                )
    med: dict[str, Any] = {
        "events_per_s_none": statistics.median(c["none"]["events_per_s"] for c in cost),
        "events_per_s_twenty": statistics.median(c["twenty"]["events_per_s"] for c in cost),
        "ratio": statistics.median(c["ratio"] for c in cost),
        "freshness": {
            str(rate): {
                "p50_ms": statistics.median(f["p50_ms"] for f in fresh if f["rate"] == rate),
                "p99_ms": statistics.median(f["p99_ms"] for f in fresh if f["rate"] == rate),
            }
            for rate in sorted({f["rate"] for f in fresh})
        },
    }
    print(f"\nmedian of {args.rounds} rounds ({args.events:,} events, 3 sites, 20 audiences)")
    print(f"  segmenter, no audiences   {med['events_per_s_none']:>10,.0f} events/s")
    print(f"  segmenter, 20 audiences   {med['events_per_s_twenty']:>10,.0f} events/s")
    print(f"  ratio (same round)        {med['ratio']:>10.2f}")
    for rate, f in med["freshness"].items():
        print(
            f"  freshness pixel->enter    p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms "
            f"at {float(rate):,.0f} pixels/s (goal: p99 < 1000 ms)"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"audiences-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_bytes(
        orjson.dumps(
            {"args": vars(args), "cost": cost, "freshness": fresh, "median": med},
            option=orjson.OPT_INDENT_2,
        )
    )
    print(f"  raw results {path}")


if __name__ == "__main__":
    asyncio.run(main())
