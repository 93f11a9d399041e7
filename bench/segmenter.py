"""Segmenter throughput against ClickHouse's own insert speed, same data, same run.

A topic on the embedded broker (pinned to core 1) is preloaded once with realistic canonical
events (three sites, thousands of visitors, page views, product views, carts, checkouts,
purchases, leads, identifies... over the last week). Each round, each phase in its own process
pinned to core 0, each into a fresh chDB directory created by the project's migrations:

* ``raw``: the same JSON bytes that are on the topic, inserted straight into ``events`` in large
  ``JSONEachRow`` batches (the engine's own speed on this machine);
* ``twenty``: the segmenter with 20 audiences active consumes the topic from the beginning;
* ``none``: the segmenter with no audience, for reference.

The raw insert uses the settings the segmenter inserts events with
(``SegmenterSettings.insert_settings``), so both pay the same engine work per row. A segmenter
is timed from the first record it consumed (the group join is left out) until every event is a
row, its audiences are evaluated and its offsets committed; then the rows are counted (``lost``,
``duplicated``). CPU is the process's (the chDB engine runs in it), so ``events per CPU second``
is events/s per core; it is also reported per thread (``MainThread``: the Python loop;
``clickhouse``: the thread calling chDB; ``ThreadPool``/``MergeMutate``: ClickHouse's query and
merge pools; ``kafka-consumer``/``rdk:*``: librdkafka).

    python -m bench.segmenter [--events 1000000] [--rounds 3] [--partitions 1]
                              [--set FIELD=VALUE ...]  # e.g. --set batch_max_events=50000

Prints a table and writes raw results to bench/results/segmenter-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.audiences import SITES, audiences_yaml, make_events
from bench.common import CORE_CLIENT, CORE_SERVER, pin
from leadback.broker import EmbeddedBroker
from leadback.kafka.topics import ensure_topics
from leadback.logs import configure_logging
from leadback.service_settings import SegmenterSettings
from leadback.settings import ClickHouseSettings

GOAL_RATIO = 0.5  # segmenter with 20 audiences / raw insert, same round
GOAL_PER_CORE = 100_000  # events per CPU second of the segmenter process


# -- preload (parent process, core 1) -----------------------------------------------------


def preload(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Produce every record with librdkafka (much cheaper per record than aiokafka)."""
    from confluent_kafka import KafkaError, Message, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",  # Kafka's Java partitioner, as ingest keys them
            "compression.type": "lz4",
            "acks": "all",
            "enable.idempotence": False,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(str(err))

    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left or failed:
        raise RuntimeError(
            f"preload: {left} records undelivered, {len(failed)} failed {failed[:3]}"
        )


# -- phases (child processes, core 0) -----------------------------------------------------


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by thread name (Python's main thread,
    the ClickHouse call thread, chDB's own pools, librdkafka's threads...)."""
    tick = os.sysconf("SC_CLK_TCK")
    python = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = python.get(int(task.name)) or stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        name = name.rstrip("0123456789").rstrip(":_-") or name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    names = sorted(set(before) | set(after), key=lambda n: -(after.get(n, 0) - before.get(n, 0)))
    return {n: round(after.get(n, 0.0) - before.get(n, 0.0), 2) for n in names}


async def phase_raw(args: argparse.Namespace) -> dict[str, Any]:
    """Insert the data file into a fresh ``events`` table in ``--raw-batch`` row batches."""
    from leadback.store.client import ClickHouseStore
    from leadback.store.migrations import migrate

    lines = Path(args.data).read_bytes().split(b"\n")
    chunks = [
        b"\n".join(lines[i : i + args.raw_batch]) for i in range(0, len(lines), args.raw_batch)
    ]
    del lines
    store = ClickHouseStore(ClickHouseSettings(url=f"chdb://{args.chdb}", database="leadback"))
    await migrate(store)
    threads0 = thread_cpu()
    # The settings the segmenter inserts events with: the same engine work per row.
    insert_settings = SegmenterSettings(**overrides(args.set)).insert_settings
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i, chunk in enumerate(chunks):
        await store.insert_json_rows(
            "events", chunk, dedup_token=f"raw/{i}", settings=insert_settings
        )
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    threads = cpu_delta(threads0, thread_cpu())
    rows = await store.query("SELECT count(), uniqExact(event_id) FROM leadback.events")
    await store.close()
    return {
        "rows": int(rows[0][0]),
        "unique": int(rows[0][1]),
        "inserts": len(chunks),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "thread_cpu_seconds": threads,
    }


async def phase_segmenter(args: argparse.Namespace) -> dict[str, Any]:
    """Consume the topic from the beginning into a fresh database with the real segmenter."""
    from leadback.audiences.repository import AudienceRepository
    from leadback.audiences.rules import parse_audiences
    from leadback.kafka.config import producer_options
    from leadback.kafka.producer import KafkaRecordProducer
    from leadback.segmenter.service import build_engine, build_segmenter, change_producer
    from leadback.service_settings import AudienceSettings
    from leadback.settings import KafkaSettings, Settings
    from leadback.store.client import ClickHouseStore
    from leadback.store.migrations import migrate

    rid = uuid.uuid4().hex[:8]
    audiences = Path(args.audiences).read_text() if args.audiences else None
    store = ClickHouseStore(ClickHouseSettings(url=f"chdb://{args.chdb}", database="leadback"))
    await migrate(store)
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap=args.bootstrap,
            topic_events=args.topic,
            topic_invalid=f"{args.topic}-invalid",
            topic_changes=f"{args.topic}-changes-{rid}",
        ),
        segmenter=SegmenterSettings(
            group_id=f"bench-{rid}",
            metrics_port=0,
            **overrides(args.set),
        ),
        audiences=AudienceSettings(enabled=audiences is not None),
    )
    producer = KafkaRecordProducer(
        **producer_options(settings.kafka, args.bootstrap, embedded=True)
    )
    await producer.start()
    changes = change_producer(settings, args.bootstrap, embedded=True)  # as the service does
    engine = None
    if audiences is not None:
        repo = AudienceRepository(store)
        for spec in parse_audiences(yaml.safe_load(audiences)):
            await repo.put(spec)
        engine = build_engine(settings, store, changes)
        await engine.start()
    seg = build_segmenter(settings, store, args.bootstrap, producer, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(seg.run(stop))
    # The group join takes seconds on the embedded broker: time from the first record.
    join = time.perf_counter()
    while not seg.stats.records_fetched and time.perf_counter() - join < 120:
        await asyncio.sleep(0.002)
    threads0 = thread_cpu()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    last, last_change = 0, t0
    while seg.stats.events_inserted < args.events:
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        if seg.stats.events_inserted != last:
            last, last_change = seg.stats.events_inserted, now
        elif now - last_change > args.idle_timeout:
            break
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    threads = cpu_delta(threads0, thread_cpu())
    stop.set()
    await task
    rows = await store.query("SELECT count(), uniqExact(event_id) FROM leadback.events")
    members = 0
    if engine is not None:
        found = await store.query(
            "SELECT count() FROM leadback.memberships FINAL WHERE state = 'in'"
        )
        members = int(found[0][0])
    await store.close()
    await producer.stop()
    changes.close()
    return {
        "events": seg.stats.events_inserted,
        "rows": int(rows[0][0]),
        "unique": int(rows[0][1]),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "batches": seg.stats.batches_inserted,
        "rounds": seg.stats.rounds,
        "quarantined": seg.stats.events_quarantined,
        "members": members,
        "changes": engine.stats.changes if engine else 0,
        "evaluations": engine.stats.evaluations if engine else 0,
        "thread_cpu_seconds": threads,
    }


def overrides(items: list[str] | None) -> dict[str, Any]:
    """``FIELD=VALUE`` segmenter settings (a value that parses as JSON is taken as such)."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, _, value = item.partition("=")
        try:
            out[name] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[name] = value
    return out


def run_phase(args: argparse.Namespace) -> None:
    pin(0, CORE_SERVER)
    configure_logging("warning")
    result = asyncio.run(phase_raw(args) if args.phase == "raw" else phase_segmenter(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


def spawn(phase: str, *extra: str, timeout: float = 1800) -> dict[str, Any]:
    """Run one phase in a fresh process (chDB: one data directory per process)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.segmenter", "--phase", phase, *extra],
        stdout=subprocess.PIPE,
        timeout=timeout,
        check=True,
    )
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- driver -------------------------------------------------------------------------------


def _rates(result: dict[str, Any], n: int) -> dict[str, Any]:
    rows = result.get("unique", 0)
    result["events_per_s"] = rows / result["seconds"]
    result["events_per_cpu_s"] = rows / max(result["cpu_seconds"], 1e-9)
    result["cpu_us_per_event"] = result["cpu_seconds"] / max(rows, 1) * 1e6
    result["lost"] = n - rows
    result["duplicated"] = result.get("rows", 0) - rows
    return result


def drive(args: argparse.Namespace) -> None:
    configure_logging("warning")
    pin(0, CORE_CLIENT)
    n = args.events
    t = time.perf_counter()
    records = make_events(n, time.time())
    size = sum(len(v) for _, v in records)
    print(
        f"{n:,} events, {size / n:,.0f} bytes each on average, built in "
        f"{time.perf_counter() - t:.1f} s"
    )
    rounds: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="leadback-bench-seg-") as tmp,
        EmbeddedBroker() as broker,
    ):
        pin(broker.pid or 0, CORE_CLIENT)
        work = Path(tmp)
        data = work / "events.jsonl"
        data.write_bytes(b"\n".join(v for _, v in records))
        document = work / "audiences.yaml"
        document.write_text(audiences_yaml(list(SITES)))
        topic = f"seg-{uuid.uuid4().hex[:8]}"
        asyncio.run(
            ensure_topics(broker.bootstrap, {topic: args.partitions, f"{topic}-invalid": 1})
        )
        t = time.perf_counter()
        preload(broker.bootstrap, topic, records)
        print(
            f"preloaded {topic} ({args.partitions} partitions) in {time.perf_counter() - t:.1f} s"
        )
        del records
        common = ["--events", str(n)]
        consume = [*common, "--bootstrap", broker.bootstrap, "--topic", topic]
        consume += ["--idle-timeout", str(args.idle_timeout)]
        sets = [x for kv in args.set or [] for x in ("--set", kv)]
        consume += sets
        for i in range(args.rounds):
            raw = spawn(
                "raw",
                *common,
                "--data",
                str(data),
                "--chdb",
                str(work / f"raw{i}"),
                "--raw-batch",
                str(args.raw_batch),
                *sets,
            )
            raw = _rates(raw, n)
            twenty = spawn(
                "segmenter",
                *consume,
                "--chdb",
                str(work / f"twenty{i}"),
                "--audiences",
                str(document),
            )
            twenty = _rates(twenty, n)
            none = spawn("segmenter", *consume, "--chdb", str(work / f"none{i}"))
            none = _rates(none, n)
            ratio = twenty["events_per_s"] / raw["events_per_s"]
            rounds.append({"raw": raw, "twenty": twenty, "none": none, "ratio": ratio})
            print(
                f"round {i + 1}: raw insert {raw['events_per_s']:,.0f} ev/s; segmenter "
                f"20 audiences {twenty['events_per_s']:,.0f} ev/s "
                f"({twenty['events_per_cpu_s']:,.0f}/CPU s, {twenty['rounds']} rounds, "
                f"{twenty['members']} members, lost {twenty['lost']}); no audiences "
                f"{none['events_per_s']:,.0f} ev/s ({none['events_per_cpu_s']:,.0f}/CPU s, "
                f"lost {none['lost']}); ratio {ratio:.2f}",
                flush=True,
            )
            for d in (work / f"raw{i}", work / f"twenty{i}", work / f"none{i}"):
                subprocess.run(["rm", "-rf", str(d)], check=False)

    def med(phase: str, key: str) -> float:
        return statistics.median(r[phase][key] for r in rounds)

    ratio = statistics.median(r["ratio"] for r in rounds)
    per_core = med("twenty", "events_per_cpu_s")
    lost = max(r[p]["lost"] for r in rounds for p in ("raw", "twenty", "none"))
    duplicated = max(r[p]["duplicated"] for r in rounds for p in ("raw", "twenty", "none"))
    lines = [
        f"median of {args.rounds} rounds, {n:,} events, {len(SITES)} sites, "
        f"{args.partitions} partitions",
        f"  {'phase':<28}{'events/s':>12}{'events/CPU s':>14}{'CPU us/event':>14}",
    ]
    for phase, label in (
        ("raw", "raw insert (JSONEachRow)"),
        ("twenty", "segmenter, 20 audiences"),
        ("none", "segmenter, no audiences"),
    ):
        lines.append(
            f"  {label:<28}{med(phase, 'events_per_s'):>12,.0f}"
            f"{med(phase, 'events_per_cpu_s'):>14,.0f}{med(phase, 'cpu_us_per_event'):>14.2f}"
        )
    for phase in ("raw", "twenty", "none"):
        names = {name for r in rounds for name in r[phase]["thread_cpu_seconds"]}
        by_thread = {
            name: statistics.median(r[phase]["thread_cpu_seconds"].get(name, 0.0) for r in rounds)
            for name in names
        }
        top = sorted(by_thread.items(), key=lambda kv: -kv[1])[:6]
        lines.append(
            f"  CPU s by thread, {phase}: " + ", ".join(f"{k} {v:.2f}" for k, v in top if v)
        )
    lines += [
        f"  ratio 20 audiences / raw (same round) {ratio:.2f}; rows lost (max) {lost}, "
        f"duplicated (max) {duplicated}",
        f"  {'PASS' if ratio >= GOAL_RATIO else 'MISS'} segmenter >= {GOAL_RATIO}x raw insert "
        f"({ratio:.2f}x)",
        f"  {'PASS' if per_core >= GOAL_PER_CORE else 'MISS'} segmenter >= "
        f"{GOAL_PER_CORE:,} events/s per core ({per_core:,.0f})",
    ]
    print("\n" + "\n".join(lines))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"segmenter-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_bytes(
        orjson.dumps(
            {
                "args": vars(args),
                "rounds": rounds,
                "median": {
                    "raw_events_per_s": med("raw", "events_per_s"),
                    "twenty_events_per_s": med("twenty", "events_per_s"),
                    "none_events_per_s": med("none", "events_per_s"),
                    "twenty_events_per_cpu_s": per_core,
                    "none_events_per_cpu_s": med("none", "events_per_cpu_s"),
                    "ratio": ratio,
                },
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    print(f"  raw results {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--partitions", type=int, default=1, help="of the preloaded topic (`leadback up`: 1)"
    )
    parser.add_argument("--raw-batch", type=int, default=100_000, help="rows per raw insert")
    parser.add_argument(
        "--idle-timeout", type=float, default=60.0, help="give up after no progress this long"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="a segmenter setting for every segmenter phase (e.g. batch_max_events=100000)",
    )
    parser.add_argument("--phase", choices=["raw", "segmenter"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--chdb", help=argparse.SUPPRESS)
    parser.add_argument("--audiences", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
