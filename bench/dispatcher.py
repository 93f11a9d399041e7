"""Dispatcher benchmark: audience changes to webhook requests, against a naive dispatcher.

The embedded broker and a *load process* (three tiny HTTP/1.1 receivers and a librdkafka
producer of change records) share core 1; the dispatcher runs in this process on core 0, over
chDB in a temp directory, exactly as ``leadback up`` embeds it (a :class:`Dispatcher` over the
change topic, with the webhook channel and its Standard Webhooks signing). Every arrival time and
every production time is taken in the load process (one clock).

Each round gets a fresh database (migrations, audience ``carts`` on site ``demo``) and
campaigns applied through ``CampaignRepository``: one campaign per destination, one step
``wait: 0s``:

* ``batched``: a webhook with ``batch_size`` 100 (one POST per 100 people);
* ``single``: a webhook with ``batch_size`` 1 (one POST per person);
* ``slow``: a webhook with ``batch_size`` 1 to a third receiver; its campaign is enabled for
  both steady phases, and the receiver answers at once in the first and waits 2 s and answers
  503 half the time (200 otherwise) in the second.

Before changes are produced, what the send-time checks read is bulk-inserted: a ``memberships``
row (state ``in``, the change's ``entered_at``) and a consent event (``all``, no GPC) per
person. Then the ``enter`` records go to the change topic, keyed ``site:person``. Phases:

1. ``naive`` (the anchor, before the dispatcher starts): an aiokafka consumer on its own topic
   that, per change, awaits one httpx POST to the ``single`` receiver; no store at all.
2. ``backlog``: ``--persons`` changes produced at once; messages/s of ``batched`` and of
   ``single``, each from the first change produced to the last person's request received
   (the dispatcher process's CPU over the phase too).
3. ``steady``: ``--rate`` changes/s for ``--seconds``, all three destinations healthy; latency
   from each change's production to its person's request at each receiver (p50, p99);
4. ``steady + slow``: the same work with the third destination slow and failing: the others
   must not move.

    python -m bench.dispatcher [--persons 20000] [--rate 150] [--seconds 20] [--rounds 3]
                               [--partitions 2] [--concurrency N] [--quick]

Prints per-round lines, medians over rounds and same-round ratios; writes the raw results to
bench/results/dispatcher-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from aiokafka import AIOKafkaConsumer

from bench.common import CORE_CLIENT, CORE_SERVER, cpu_model, pin
from bench.procs import pin_all_threads
from bench.segmenter import cpu_delta, thread_cpu
from leadback.audiences.changes import change_record, encode, ms_timestamp
from leadback.audiences.repository import AudienceRepository
from leadback.audiences.rules import parse_audiences
from leadback.broker import EmbeddedBroker, _set_parent_death_signal
from leadback.campaigns.document import parse_document
from leadback.campaigns.repository import CampaignRepository
from leadback.dispatcher.member import Dispatcher
from leadback.events import empty_click_ids, empty_utm
from leadback.identity.contacts import ContactCipher
from leadback.kafka.config import common_options, producer_options
from leadback.kafka.consumer import GroupConsumer
from leadback.kafka.producer import KafkaRecordProducer
from leadback.kafka.topics import ensure_topics
from leadback.logs import configure_logging
from leadback.service_settings import DispatcherSettings
from leadback.settings import ClickHouseSettings, KafkaSettings
from leadback.signed_tokens import TokenSigner
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from leadback.stream.consumer import Consumer, PartitionsCallback

RESULTS = Path(__file__).parent / "results"
SITE, AUDIENCE = "demo", "carts"
SECRET_ENV = "LEADBACK_BENCH_WEBHOOK_SECRET"
RECEIVERS = ("batched", "single", "slow")
SLOW_WAIT_S = 2.0
SLOW_FAILURE_SHARE = 0.5
IDLE_TIMEOUT_S = 60.0  # a phase gives up after this long without a new person received

AUDIENCES = """
audiences:
  - id: carts
    site: demo
    rule:
      all:
        - then_not: {did: {event: add_to_cart, within: 7d}, then: {event: purchase}}
        - idle: 1h
"""


# -- the load process (core 1): receivers and the change producer --------------------------


@dataclass
class Received:
    """What one receiver got since the last reset."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)  # person -> first arrival
    accepted: set[str] = field(default_factory=set)  # persons answered 2xx at least once
    repeats: int = 0  # requests for a person already accepted (the at-most-once window)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the pipe (this class lives in ``__mp_main__`` over there)."""
        return {
            "requests": self.requests,
            "statuses": self.statuses,
            "first": self.first,
            "accepted": len(self.accepted),
            "repeats": self.repeats,
        }


def persons_in(body: bytes) -> list[str]:
    """The persons a request is about: a webhook batch, one webhook message, or a naive POST."""
    doc = orjson.loads(body)
    items = doc["data"] if isinstance(doc.get("data"), list) else [doc]
    return [str(m.get("person_id") or m.get("visitor_id")) for m in items]


class Receiver:
    """A minimal HTTP/1.1 server (keep-alive, Content-Length bodies) noting each arrival."""

    def __init__(self, name: str, *, wait_s: float = 0.0, failure_share: float = 0.0) -> None:
        self.name = name
        self.wait_s = wait_s
        self.failure_share = failure_share
        self.got = Received()
        self._rng = random.Random(name)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                status = self._note(time.monotonic(), body)
                if self.wait_s:
                    await asyncio.sleep(self.wait_s)
                if status == 503:
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: 2\r\n\r\n{}"
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the load process is stopping (3.11's streams log a cancelled handler)
        finally:
            writer.close()

    def _note(self, now: float, body: bytes) -> int:
        status = 503 if self._rng.random() < self.failure_share else 200
        got = self.got
        got.requests += 1
        got.statuses[status] = got.statuses.get(status, 0) + 1
        for person in persons_in(body):
            got.first.setdefault(person, now)
            if status == 200:
                if person in got.accepted:
                    got.repeats += 1
                got.accepted.add(person)
        return status


class Producer:
    """Change records to a topic with librdkafka, keyed ``site:person``; notes when each
    person's change was handed to the client."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Producer as RdProducer

        self._p = RdProducer(
            {
                "bootstrap.servers": bootstrap,
                "partitioner": "murmur2_random",  # Kafka's Java partitioner, as ingest keys
                "acks": "all",
                "enable.idempotence": False,
                "linger.ms": 2,
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        self.failed = 0

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failed += 1

    def _one(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._p.produce(topic, value, key, on_delivery=self._delivered)
                return
            except BufferError:
                self._p.poll(0.01)

    async def produce(
        self, topic: str, changes: Sequence[tuple[str, bytes, bytes]], rate: float | None
    ) -> dict[str, float]:
        """Produce ``(person, key, value)`` records, all at once or at ``rate`` per second;
        returns person -> production time."""
        produced: dict[str, float] = {}
        start = time.monotonic()
        i = 0
        while i < len(changes):
            if rate is None:
                due = len(changes)
            else:
                due = min(len(changes), int((time.monotonic() - start) * rate) + 1)
            while i < due:
                person, key, value = changes[i]
                produced[person] = time.monotonic()
                self._one(topic, key, value)
                i += 1
            self._p.poll(0)
            if rate is not None and i < len(changes):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(None, self._p.flush, 60)
        if left or self.failed:
            raise RuntimeError(f"producer: {left} undelivered, {self.failed} failed")
        return produced


def load_main(conn: Connection, bootstrap: str, pin_core: int | None) -> None:
    """The load process: receivers on free ports (sent back first), then commands."""
    _set_parent_death_signal()  # a killed benchmark must not leave its load running
    if pin_core is not None:
        pin(0, pin_core)
    asyncio.run(_load(conn, bootstrap))


async def _load(conn: Connection, bootstrap: str) -> None:
    receivers = {
        "batched": Receiver("batched"),
        "single": Receiver("single"),
        "slow": Receiver("slow"),  # healthy until told otherwise ("slow" command)
    }
    servers = []
    ports: dict[str, int] = {}
    for name, receiver in receivers.items():
        server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0, backlog=1024)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    producer = Producer(bootstrap)
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    conn.send(ports)
    while True:
        command, *args = await commands.get()
        if command == "stop":
            break
        if command == "reset":
            for r in receivers.values():
                r.got = Received()
            conn.send("ok")
        elif command == "slow":  # the third destination turns slow and failing, or back
            (on,) = args
            receivers["slow"].wait_s = SLOW_WAIT_S if on else 0.0
            receivers["slow"].failure_share = SLOW_FAILURE_SHARE if on else 0.0
            conn.send("ok")
        elif command == "counts":
            conn.send({name: len(r.got.first) for name, r in receivers.items()})
        elif command == "collect":
            conn.send({name: r.got.as_dict() for name, r in receivers.items()})
        elif command == "produce":
            topic, changes, rate = args
            try:
                conn.send(await producer.produce(topic, changes, rate))
            except Exception as exc:  # noqa: BLE001 - handed to the driver, which raises it
                conn.send(exc)
    loop.remove_reader(conn.fileno())
    for server in servers:
        server.close()


class Load:
    """The driver's handle on the load process."""

    def __init__(self, bootstrap: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        core = CORE_CLIENT if (os.cpu_count() or 1) > 1 else None
        self.proc = ctx.Process(
            target=load_main, args=(child, bootstrap, core), name="bench-load", daemon=True
        )
        self.proc.start()
        self.ports: dict[str, int] = self._conn.recv()

    def call(self, *command: Any) -> Any:
        self._conn.send(command)
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def acall(self, *command: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, self.call, *command)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/hook"

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(("stop",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# -- data: persons, their rows, their changes ---------------------------------------------


@dataclass
class Batch:
    persons: list[str]
    entered_ms: int
    changes: list[tuple[str, bytes, bytes]]  # (person, key, value)


def make_batch(n: int, rng: random.Random) -> Batch:
    """``n`` new visitors entering ``carts`` now, and their ``enter`` records."""
    persons = [f"v{rng.getrandbits(96):024x}" for _ in range(n)]
    now_ms = int(time.time() * 1000)
    changes = []
    for p in persons:
        record = change_record(
            {
                "site_id": SITE,
                "audience_id": AUDIENCE,
                "audience_version": 1,
                "person_id": p,
                "change": "enter",
                "reason": "qualifies",
                "version": 1,
                "at": now_ms,
                "entered_at": now_ms,
                "products": [],
            }
        )
        key, value = encode(record)
        changes.append((p, key, value))
    return Batch(persons, now_ms, changes)


def consent_event(person: str, at_ms: int) -> dict[str, Any]:
    """The canonical event (tests/integration/audience_kit.event's shape) granting consent."""
    return {
        "schema_version": 1,
        "event_id": f"bench-{uuid.uuid4().hex}",
        "site_id": SITE,
        "visitor_id": person,
        "type": "add_to_cart",
        "name": None,
        "sent_at": None,
        "received_at": ms_timestamp(at_ms),
        "anonymous_id": person,
        "user_id": None,
        "traits": {},
        "url": "https://demo.example/cart",
        "referrer": None,
        "utm": empty_utm(),
        "click_ids": empty_click_ids(),
        "properties": {"product_id": "sku-1", "value": 20.0},
        "context": {"user_agent": "Mozilla/5.0", "ip": "192.0.2.0", "language": "en"},
        "consent": {
            "status": "granted",
            "purposes": ["all"],
            "gpc": False,
            "dnt": False,
            "tracking": True,
        },
        "bot": False,
        "source": "json",
    }


async def insert_rows(store: ClickHouseStore, batch: Batch) -> None:
    """What the send-time checks read: a membership and a consent event per person."""
    at = batch.entered_ms
    members = b"\n".join(
        orjson.dumps(
            {
                "site_id": SITE,
                "audience_id": AUDIENCE,
                "person_id": p,
                "state": "in",
                "version": 1,
                "products": [],
                "entered_at": at,
                "changed_at": at,
                "audience_version": 1,
            }
        )
        for p in batch.persons
    )
    events = b"\n".join(orjson.dumps(consent_event(p, at - 60_000)) for p in batch.persons)
    tag = uuid.uuid4().hex
    await store.insert_json_rows("memberships", members, dedup_token=f"bench-m-{tag}")
    await store.insert_json_rows("events", events, dedup_token=f"bench-e-{tag}")


def campaigns_yaml(load: Load, *, slow: bool, concurrency: int | None) -> str:
    extra = {"concurrency": concurrency} if concurrency else {}
    secret = {"env": SECRET_ENV}
    destinations = [
        {"id": name, "kind": "webhook", "url": load.url(name), "secret": secret, **extra}
        | ({"batch_size": 100} if name == "batched" else {"batch_size": 1})
        for name in RECEIVERS
    ]
    campaigns = [
        {
            "id": name,
            "site": SITE,
            "audience": AUDIENCE,
            "enabled": slow or name != "slow",
            "steps": [
                {
                    "wait": "0s",
                    "destination": name,
                    "data": {"event": "cart_reminder", "person": "{{ person.id }}"},
                }
            ],
        }
        for name in RECEIVERS
    ]
    return yaml.safe_dump({"destinations": destinations, "campaigns": campaigns})


# -- phases (this process, core 0) --------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    bootstrap: str
    load: Load
    chdb: Path
    rng: random.Random


async def wait_received(
    ctx: Ctx, names: Sequence[str], n: int, *, idle_s: float = IDLE_TIMEOUT_S
) -> None:
    """Poll the receivers until each of ``names`` got ``n`` persons (or no progress for
    ``idle_s``: the phase reports what is missing)."""
    last, since = -1, time.monotonic()
    while True:
        counts = await ctx.load.acall("counts")
        seen = [counts[name] for name in names]
        if min(seen) >= n:
            return
        if sum(seen) != last:
            last, since = sum(seen), time.monotonic()
        elif time.monotonic() - since > idle_s:
            print(f"  (gave up waiting: {dict(zip(names, seen, strict=True))} of {n})")
            return
        await asyncio.sleep(0.05)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def phase_naive(ctx: Ctx, topic: str) -> dict[str, Any]:
    """The anchor: consume changes, one awaited POST per person, nothing else."""
    n = ctx.args.persons
    await ensure_topics(ctx.bootstrap, {topic: ctx.args.partitions})
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=ctx.bootstrap,
        group_id=f"naive-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    await consumer.start()
    url = ctx.load.url("single")
    stop = asyncio.Event()

    async def consume() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100)
                for records in batches.values():
                    for record in records:
                        change = orjson.loads(record.value or b"{}")
                        body = orjson.dumps(
                            {
                                "type": "cart_reminder",
                                "person_id": change["visitor_id"],
                                "site_id": change["site_id"],
                                "audience_id": change["audience_id"],
                            }
                        )
                        await client.post(
                            url, content=body, headers={"content-type": "application/json"}
                        )

    task = asyncio.create_task(consume())
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        batch = make_batch(n, ctx.rng)
        await ctx.load.acall("reset")
        cpu0 = time.process_time()
        produced = await ctx.load.acall("produce", topic, batch.changes, None)
        await wait_received(ctx, ["single"], n)
        cpu = time.process_time() - cpu0
        got = (await ctx.load.acall("collect"))["single"]["first"]
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
    t0 = min(produced.values())
    last = max(got.values(), default=t0)
    return {
        "persons": n,
        "received": len(got),
        "seconds": last - t0,
        "messages_per_s": len(got) / max(last - t0, 1e-9),
        "cpu_seconds": cpu,
    }


class Running:
    """The dispatcher under test, running in this process."""

    def __init__(self, ctx: Ctx, store: ClickHouseStore, topic: str) -> None:
        self.ctx = ctx
        kafka = KafkaSettings(bootstrap=ctx.bootstrap, topic_changes=topic)
        group = f"bench-dispatcher-{uuid.uuid4().hex[:8]}"
        self.settings = DispatcherSettings(
            group_id=group,
            allow_private_targets=True,
            timer_interval_ms=50,
            backoff_initial_s=0.5,
            backoff_max_s=5.0,
            metrics_port=0,
        )
        self.dead = KafkaRecordProducer(**producer_options(kafka, ctx.bootstrap, embedded=True))

        def consumer(on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> Consumer:
            return GroupConsumer(
                topic,
                group_id=group,
                on_assigned=on_assigned,
                on_revoked=on_revoked,
                session_timeout_ms=kafka.consumer_session_timeout_ms(embedded_broker=True),
                **common_options(kafka, ctx.bootstrap),
            )

        self.dispatcher = Dispatcher(
            self.settings,
            topic=topic,
            store=store,
            consumer_factory=consumer,
            cipher=ContactCipher([ContactCipher.generate_key()]),
            signer=TokenSigner(os.urandom(32)),
            dead_producer=self.dead,
            dead_topic=f"{topic}-dead",
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.dead.start()
        self.task = asyncio.create_task(self.dispatcher.run(self.stop))
        deadline = time.monotonic() + 60
        while not self.dispatcher.assignment:
            if self.task.done():
                await self.task  # raises what stopped it
            if time.monotonic() > deadline:
                raise RuntimeError("the dispatcher got no partition within 60 s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.dead.stop()


def _stats(d: Dispatcher) -> dict[str, Any]:
    s = d.stats
    return {
        "changes_seen": s.changes_seen,
        "passes": s.passes,
        "decided": s.decided,
        "outcomes": s.outcomes,
        "dead": s.dead,
    }


async def phase_backlog(
    ctx: Ctx, store: ClickHouseStore, run: Running, topic: str
) -> dict[str, Any]:
    """``--persons`` changes at once; messages/s per destination."""
    n = ctx.args.persons
    batch = make_batch(n, ctx.rng)
    await insert_rows(store, batch)
    await ctx.load.acall("reset")
    before = _stats(run.dispatcher)
    threads0 = thread_cpu()
    cpu0 = time.process_time()
    produced = await ctx.load.acall("produce", topic, batch.changes, None)
    await wait_received(ctx, ["batched", "single"], n)
    cpu = time.process_time() - cpu0
    threads = cpu_delta(threads0, thread_cpu())
    got = await ctx.load.acall("collect")
    t0 = min(produced.values())
    out: dict[str, Any] = {"persons": n, "cpu_seconds": cpu, "thread_cpu_seconds": threads}
    total = 0
    for name in ("batched", "single"):
        r = got[name]
        last = max(r["first"].values(), default=t0)
        total += len(r["first"])
        out[name] = {
            "received": len(r["first"]),
            "requests": r["requests"],
            "repeats": r["repeats"],
            "seconds": last - t0,
            "messages_per_s": len(r["first"]) / max(last - t0, 1e-9),
        }
    out["messages_per_cpu_s"] = total / max(cpu, 1e-9)
    after = _stats(run.dispatcher)
    out["passes"] = after["passes"] - before["passes"]
    return out


async def phase_steady(
    ctx: Ctx, store: ClickHouseStore, run: Running, topic: str
) -> dict[str, Any]:
    """``--rate`` changes/s for ``--seconds``: change produced -> request, per destination."""
    n = int(ctx.args.rate * ctx.args.seconds)
    batch = make_batch(n, ctx.rng)
    await insert_rows(store, batch)
    await ctx.load.acall("reset")
    cpu0 = time.process_time()
    produced = await ctx.load.acall("produce", topic, batch.changes, ctx.args.rate)
    span = max(produced.values()) - min(produced.values())
    await wait_received(ctx, ["batched", "single"], n)
    cpu = time.process_time() - cpu0
    got = await ctx.load.acall("collect")
    out: dict[str, Any] = {
        "persons": n,
        "produce_seconds": span,
        "rate": n / max(span, 1e-9),
        "cpu_seconds": cpu,
    }
    for name in RECEIVERS:
        r = got[name]
        lat = [(t - produced[p]) * 1000 for p, t in r["first"].items() if p in produced]
        out[name] = {
            "received": len(r["first"]),
            "accepted": r["accepted"],
            "requests": r["requests"],
            "statuses": {str(k): v for k, v in r["statuses"].items()},
            "repeats": r["repeats"],
            "p50_ms": percentile(lat, 0.50),
            "p99_ms": percentile(lat, 0.99),
            "max_ms": max(lat, default=float("nan")),
        }
    out["dispatcher"] = _stats(run.dispatcher)
    return out


async def one_round(ctx: Ctx, i: int) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:8]
    store = ClickHouseStore(
        ClickHouseSettings(url=f"chdb://{ctx.chdb}", database=f"bench_{i}_{rid}")
    )
    await migrate(store)
    for spec in parse_audiences(yaml.safe_load(AUDIENCES)):
        await AudienceRepository(store).put(spec)
    naive = await phase_naive(ctx, f"bench-naive-{rid}")
    topic = f"bench-changes-{rid}"
    await ensure_topics(ctx.bootstrap, {topic: ctx.args.partitions, f"{topic}-dead": 1})
    repo = CampaignRepository(store)
    document = campaigns_yaml(ctx.load, slow=False, concurrency=ctx.args.concurrency)
    await repo.apply(parse_document(yaml.safe_load(document)), sites=None)
    run = Running(ctx, store, topic)
    await run.start()
    try:
        backlog = await phase_backlog(ctx, store, run, topic)
        # The third campaign takes part in both steady phases, so they do the same work; only
        # its destination's behaviour changes: healthy, then slow (2 s) and failing (503).
        document = campaigns_yaml(ctx.load, slow=True, concurrency=ctx.args.concurrency)
        await repo.apply(parse_document(yaml.safe_load(document)), sites=None)
        await run.dispatcher.book.refresh()
        slow = run.dispatcher.book.campaign(SITE, "slow")
        assert slow is not None and slow.spec.enabled, "the third campaign did not load"
        await ctx.load.acall("slow", False)
        steady = await phase_steady(ctx, store, run, topic)
        await ctx.load.acall("slow", True)
        with_slow = await phase_steady(ctx, store, run, topic)
    finally:
        await run.close()
        await store.command(f"DROP DATABASE IF EXISTS {store.database} SYNC")
        await store.close()
    ratio = backlog["single"]["messages_per_s"] / max(naive["messages_per_s"], 1e-9)
    return {
        "naive": naive,
        "backlog": backlog,
        "steady": steady,
        "with_slow": with_slow,
        "ratio_single_vs_naive": ratio,
    }


# -- driver -------------------------------------------------------------------------------


def round_line(i: int, r: dict[str, Any]) -> str:
    b, s, w, nv = r["backlog"], r["steady"], r["with_slow"], r["naive"]
    slow = w["slow"]
    return (
        f"round {i}: backlog {b['persons']:,}: batched {b['batched']['messages_per_s']:,.0f} "
        f"msg/s, single {b['single']['messages_per_s']:,.0f} msg/s "
        f"({b['messages_per_cpu_s']:,.0f} msg/CPU s, {b['passes']} passes); naive "
        f"{nv['messages_per_s']:,.0f} msg/s; single/naive {r['ratio_single_vs_naive']:.2f}\n"
        f"         steady {s['rate']:,.0f}/s: p50/p99 batched {s['batched']['p50_ms']:,.0f}/"
        f"{s['batched']['p99_ms']:,.0f} ms, single {s['single']['p50_ms']:,.0f}/"
        f"{s['single']['p99_ms']:,.0f} ms; with slow: batched {w['batched']['p50_ms']:,.0f}/"
        f"{w['batched']['p99_ms']:,.0f} ms, single {w['single']['p50_ms']:,.0f}/"
        f"{w['single']['p99_ms']:,.0f} ms; slow {slow['requests']} requests "
        f"({slow['statuses'].get('503', 0)} x 503), {slow['accepted']}/{w['persons']} accepted"
    )


def dig(doc: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        doc = doc[key]
    return doc


def report(args: argparse.Namespace, info: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r) for r in rounds)

    def med_at(*keys: str) -> float:
        return statistics.median(float(dig(r, *keys)) for r in rounds)

    n, rate = args.persons, args.rate
    lines = [
        f"median of {len(rounds)} round(s); backlog {n:,} changes; steady {rate:,.0f}/s for "
        f"{args.seconds:g} s; {args.partitions} partitions; destination concurrency "
        f"{args.concurrency or 'default (4)'}",
        f"  {'throughput (backlog)':<46}{'msgs/s':>10}{'seconds':>10}",
    ]
    for label, part in (
        ("Leadback batched (webhook, 100 per POST)", ("backlog", "batched")),
        ("Leadback single (webhook, one POST each)", ("backlog", "single")),
        ("naive (aiokafka + one awaited httpx POST)", ("naive",)),
    ):
        lines.append(
            f"  {label:<46}{med_at(*part, 'messages_per_s'):>10,.0f}"
            f"{med_at(*part, 'seconds'):>10.2f}"
        )
    cpu = med(lambda r: r["backlog"]["cpu_seconds"])
    lines.append(
        f"  dispatcher process CPU over the backlog {cpu:.2f} s: "
        f"{med(lambda r: r['backlog']['messages_per_cpu_s']):,.0f} messages per CPU second"
    )
    names = {k for r in rounds for k in r["backlog"]["thread_cpu_seconds"]}
    by_thread = {
        k: statistics.median(r["backlog"]["thread_cpu_seconds"].get(k, 0.0) for r in rounds)
        for k in names
    }
    top = sorted(by_thread.items(), key=lambda kv: -kv[1])[:6]
    lines.append("  CPU s by thread, backlog: " + ", ".join(f"{k} {v:.2f}" for k, v in top if v))
    lines.append(
        f"  ratio Leadback single / naive (same round): "
        f"{med(lambda r: r['ratio_single_vs_naive']):.2f}"
    )
    lines.append(f"  {'latency, change produced -> request (ms)':<46}{'p50':>10}{'p99':>10}")
    lines.extend(
        f"  {title + ', ' + dest:<46}"
        f"{med_at(phase, dest, 'p50_ms'):>10,.0f}{med_at(phase, dest, 'p99_ms'):>10,.0f}"
        for phase, title in (("steady", "without slow"), ("with_slow", "with slow"))
        for dest in ("batched", "single")
    )

    def moved(dest: str) -> float:
        return med(lambda r: r["with_slow"][dest]["p99_ms"] / r["steady"][dest]["p99_ms"])

    lines.append(
        f"  p99 with slow / without (same round): batched {moved('batched'):.2f}, "
        f"single {moved('single'):.2f}"
    )
    missing = max(
        r[p]["persons"] - r[p][d]["received"]
        for r in rounds
        for p in ("backlog", "steady", "with_slow")
        for d in ("batched", "single")
    )
    lost_naive = max(r["naive"]["persons"] - r["naive"]["received"] for r in rounds)
    repeats = max(
        r[p][d]["repeats"]
        for r in rounds
        for p in ("backlog", "steady", "with_slow")
        for d in ("batched", "single")
    )
    lines.append(
        f"  persons never received (max): Leadback {missing}, naive {lost_naive}; "
        f"repeated deliveries (max) {repeats}"
    )
    print("\n" + "\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"dispatcher-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_bytes(
        orjson.dumps(
            {"args": vars(args), "machine": info, "rounds": rounds},
            option=orjson.OPT_INDENT_2,
            default=lambda o: sorted(o) if isinstance(o, set) else str(o),
        )
    )
    print(f"  raw results {path}")


async def drive(args: argparse.Namespace, broker: EmbeddedBroker, load: Load, tmp: Path) -> None:
    ctx = Ctx(args, broker.bootstrap, load, tmp / "chdb", random.Random(args.seed))
    rounds: list[dict[str, Any]] = []
    for i in range(1, args.rounds + 1):
        result = await one_round(ctx, i)
        rounds.append(result)
        print(round_line(i, result), flush=True)
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg_end": os.getloadavg(),
    }
    report(args, info, rounds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--persons", type=int, default=20_000, help="changes in the backlog")
    # Each change makes three messages, two of them one POST each: 150/s stays within what one
    # core sends per person, so the latency phases measure latency, not a growing queue.
    parser.add_argument("--rate", type=float, default=150.0, help="changes/s, latency phases")
    parser.add_argument("--seconds", type=float, default=20.0, help="per latency phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=2, help="of the change topic")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="every destination's (default: its own)"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 2,000 persons, 150/s for 5 s, 1 round"
    )
    args = parser.parse_args()
    if args.quick:
        args.persons, args.rate, args.seconds, args.rounds = 2_000, 150.0, 5.0, 1
    return args


def main() -> None:
    args = parse_args()
    configure_logging("warning")
    os.environ[SECRET_ENV] = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    two = (os.cpu_count() or 1) > 1
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; "
        + (
            "dispatcher (this process, chDB) on core 0; broker, receivers and producer on core 1"
            if two
            else "one core: nothing pinned"
        ),
        flush=True,
    )
    pin(0, CORE_CLIENT)  # the broker and the load process inherit core 1
    with (
        tempfile.TemporaryDirectory(prefix="leadback-bench-dispatch-") as tmp,
        EmbeddedBroker() as broker,
    ):
        pin_all_threads(broker.pid or 0, CORE_CLIENT)
        load = Load(broker.bootstrap)
        try:
            pin(0, CORE_SERVER)  # the dispatcher, chDB's threads and librdkafka's from here on
            asyncio.run(drive(args, broker, load, Path(tmp)))
        finally:
            load.close()


if __name__ == "__main__":
    main()
