"""Freshness: from a probe pixel's HTTP response to its ``enter`` on the change topic.

Ingest and segmenter run as processes (as ``leadback up`` runs them) on a chDB directory that
holds ``history`` stored events (a copy of a cached fill, :mod:`bench.history_cache`) and
``audiences`` audiences over ``ceil(audiences / 25)`` sites (:mod:`bench.audience_sets`), plus a
probe audience on the first site. The segmenter evaluates every audience over the whole history
when it starts (timed: ``startup_s``); the changes that logs are published and read by the
dispatcher beside it (``settle_s``) before any load. Then a steady pixel load over the
audiences' sites runs while probe pixels qualify new visitors for the probe audience, ten a
second; the time from each probe's response to its ``enter`` is the freshness.

The load looks like traffic: visitors come back to the history's visitors (drawn with the
history's skew: heavy visitors return more), new ones arrive, a visitor's pixels come in
sessions; the event mix, product ids, categories, prices, URLs, referrers and user agents are
those of the history. While it runs, the segmenter's ``/metrics`` is read four times a second:
events inserted per second (from the start of the load until the last probe came back),
evaluation statements per second and their durations.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.audience_sets import PROBE_ID, audience_sites, many_audiences_yaml, probe_yaml
from bench.common import CORE_SERVER, apply_audiences_offline, wait_ready
from bench.history import HISTORY_SITES, MIX, HistoryShape, user_agents
from bench.history_cache import (
    clone,
    keep_ready,
    ready_copy,
    ready_home,
    ready_startup_s,
    shape_of,
)
from bench.loadgen import LoadResult, run_load
from bench.paced_load import paced_load, write_requests
from bench.procs import spawn, stop, thread_cpu_of
from leadback.broker import EmbeddedBroker, free_port
from leadback.kafka.topics import ensure_topics

# What `leadback up` creates on its embedded broker (events and changes alike).
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "1"))
CHANGE_PARTITIONS = PARTITIONS
PROBE_EVERY_S = 0.1
WARMUP_MIN_S = 6.0
WARMUP_CHUNK_S = 2.0
# After a start from a kept copy (`reuse_startup`): the first timer pass evaluates everyone who
# came due since the copy was made; a long start-up had done that before its load began.
WARMUP_REUSED_MIN_S = 20.0
SCRAPE_EVERY_S = 0.25
DRAIN_MAX_S = 1800.0
DRAIN_STALL_S = 300.0  # rounds of 500 audiences over 20 sites and a long history are long
# Without a history, returning visitors come from a population of this size (not stored).
VISITORS_WITHOUT_HISTORY = 20_000


@dataclass(frozen=True)
class Case:
    """One point of the matrix."""

    history: int  # events stored before the run
    audiences: int
    rate: float  # steady pixels/s

    def label(self) -> str:
        return f"history {self.history:,}, {self.audiences} audiences, {self.rate:,.0f} px/s"


class LoadMaker:
    """Pixel requests like a site's traffic: sessions of returning and new visitors."""

    def __init__(
        self, shape: HistoryShape, sites: list[str], *, seed: int, returning: float = 0.75
    ) -> None:
        self._shape = shape
        self._sites = set(sites)
        weights = dict(HISTORY_SITES)
        self._site_list = sites
        self._site_weights = [weights.get(s, 0.01) for s in sites]
        self._rng = random.Random(seed)
        self._uas = user_agents(seed=seed + 1)
        self._returning = returning
        self._active: deque[tuple[str, str]] = deque(maxlen=2000)  # visitors mid-session
        self._types = [t for t, _ in MIX]
        self._type_weights = [w for _, w in MIX]

    def _visitor(self) -> tuple[str, str]:
        rng = self._rng
        if self._active and rng.random() < 0.8:
            return self._active[rng.randrange(len(self._active))]
        if rng.random() < self._returning:
            visitor = self._shape.returning_visitor(rng, self._sites)
        else:
            site = rng.choices(self._site_list, self._site_weights)[0]
            visitor = (site, f"{rng.getrandbits(128):032x}")
        self._active.append(visitor)
        return visitor

    def __call__(self, n: int) -> bytes:
        rng = self._rng
        site, vid = self._visitor()
        kind = rng.choices(self._types, self._type_weights)[0]
        pid, cat, price = self._shape.product(rng)
        params = [f"site={site}", f"type={kind}", f"aid={vid}"]
        path = "/"
        if kind in ("product_view", "add_to_cart", "remove_from_cart"):
            params += [f"pid={pid}", f"cat={cat}", f"p.price={price}", f"val={price}", "cur=EUR"]
            path = {"add_to_cart": "/cart"}.get(kind, f"/p/{pid}")
        elif kind in ("checkout", "purchase"):
            qty = rng.randint(1, 3)
            params += [f"pid={pid}", f"qty={qty}", f"val={round(price * qty, 2)}", "cur=EUR"]
            path = "/checkout" if kind == "checkout" else "/thank-you"
        elif kind == "page_view":
            path = rng.choice(["/", "/", f"/c/{cat}", f"/blog/{rng.randrange(400)}", "/contact"])
        elif kind == "lead":
            path = "/contact"
        elif kind == "signup":
            path = "/signup"
        elif kind == "identify":
            params.append(f"uid=user-{vid[:12]}")
        elif kind == "custom":
            params.append("n=video_play")
        params.append("url=" + quote(f"https://{site}.example{path}", safe=""))
        if rng.random() < 0.3:
            params.append("ref=" + quote("https://www.google.com/", safe=""))
        ua = self._uas[int(vid[:8], 16) % len(self._uas)]
        return (
            f"GET /p.gif?{'&'.join(params)} HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\n\r\n"
        ).encode()


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None


@dataclass
class Scrape:
    at: float
    values: dict[str, float]  # unlabelled samples by name
    buckets: dict[str, dict[float, float]]  # histogram name -> {le: cumulative count}
    quantiles: dict[str, float]  # summary name -> its 0.5 quantile


def parse_metrics(text: str, at: float) -> Scrape:
    """The samples of a /metrics page that the bench reads."""
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    quantiles: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if family.type == "histogram" and s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets.setdefault(family.name, {})[le] = s.value
            elif family.type == "summary" and s.labels.get("quantile") == "0.5":
                quantiles[family.name] = s.value
            elif not s.labels:
                values[s.name] = s.value
    return Scrape(at, values, buckets, quantiles)


def _histogram_median(first: dict[float, float], last: dict[float, float]) -> float | None:
    les = sorted(last)
    counts = [last[le] - first.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return None
    half = counts[-1] / 2
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts, strict=True):
        if c >= half:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (half - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return None


def _duration_median(
    scrapes: list[Scrape], word: str, gauge: str | None
) -> tuple[float | None, str]:
    """Median duration of what ``word`` names: from a histogram or summary the segmenter
    exposes, else from ``gauge`` (the last one's duration) sampled when its counter moved."""
    first, last = scrapes[0], scrapes[-1]
    for name, b in last.buckets.items():
        if word in name and "seconds" in name:
            median = _histogram_median(first.buckets.get(name, {}), b)
            if median is not None:
                return median, f"histogram {name}"
    for name, q in last.quantiles.items():
        if word in name and "seconds" in name:
            return q, f"summary {name}"
    if gauge is None:
        return None, "not exposed"
    counter = {
        "leadback_audience_last_evaluation_seconds": "leadback_audience_evaluations_total",
        "leadback_segmenter_last_insert_seconds": "leadback_segmenter_batches_inserted_total",
        "leadback_segmenter_last_round_seconds": "leadback_segmenter_rounds_total",
    }[gauge]
    seen: list[float] = []
    for prev, cur in itertools.pairwise(scrapes):
        if cur.values.get(counter, 0) > prev.values.get(counter, 0) and gauge in cur.values:
            seen.append(cur.values[gauge])
    if not seen:
        return None, f"{gauge} (no sample)"
    return statistics.median(seen), f"{gauge} sampled {len(seen)}x"


def metric_figures(scrapes: list[Scrape]) -> dict[str, Any]:
    """Rates and medians over the measured phase, from the /metrics samples."""
    if len(scrapes) < 2:
        return {}
    first, last = scrapes[0], scrapes[-1]
    span = last.at - first.at

    def rate(name: str) -> float:
        return (last.values.get(name, 0.0) - first.values.get(name, 0.0)) / span

    evaluation, eval_source = _duration_median(
        scrapes, "evaluation", "leadback_audience_last_evaluation_seconds"
    )
    round_median, round_source = _duration_median(
        scrapes, "round", "leadback_segmenter_last_round_seconds"
    )
    insert, insert_source = _duration_median(
        scrapes, "insert", "leadback_segmenter_last_insert_seconds"
    )
    return {
        "segmenter_events_per_s": rate("leadback_segmenter_events_inserted_total"),
        "evaluations_per_s": rate("leadback_audience_evaluations_total"),
        "persons_evaluated_per_s": rate("leadback_audience_persons_evaluated_total"),
        "changes_per_s": rate("leadback_audience_changes_total"),
        "eval_median_s": evaluation,
        "eval_median_source": eval_source,
        "round_median_s": round_median,
        "round_median_source": round_source,
        "insert_median_s": insert,
        "insert_median_source": insert_source,
    }


def _own_cpu_s() -> float:
    """CPU seconds of this process and of the children it has waited for (wrk)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def _wait_metrics(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds until the segmenter serves /metrics: it does once its audiences are evaluated
    over the whole history (``AudienceEngine.start``) and it joins the group."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the segmenter exited with code {proc.returncode} while starting")
        if await asyncio.to_thread(_get, url) is not None:
            return time.perf_counter() - t0
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the segmenter did not start within {timeout_s:.0f} s")


async def _wait_settled(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds until the audiences are live (their signals backfilled over the history, everyone
    evaluated) and what that logged is published and read by the dispatcher beside the segmenter
    (a day-old deployment is past that; the run measures steady work, with the timer passes that
    come due all along)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the segmenter exited with code {proc.returncode}")
        text = await asyncio.to_thread(_get, url)
        if text is not None:
            v = parse_metrics(text, 0.0).values
            logged = v.get("leadback_audience_changes_total", 0.0)
            published = v.get("leadback_audience_changes_published_total", 0.0)
            read = v.get("leadback_dispatch_changes_total", published)
            refreshing = v.get("leadback_audience_refreshing", 0.0) or v.get(
                "leadback_audiences_not_live", 0.0
            )
            if published >= logged and read >= published and not refreshing:
                return time.perf_counter() - t0
        await asyncio.sleep(1.0)
    raise RuntimeError(f"the start-up changes were not settled within {timeout_s:.0f} s")


async def _lag(broker: EmbeddedBroker, topic: str, metrics_url: str) -> float:
    """Events on the events topic not yet committed by the segmenter: the topic's end offsets
    (all records since the run began) minus the events it reports inserted (committed)."""
    ends = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await ends.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        produced = float(sum((await ends.end_offsets(tps)).values()))
    finally:
        await ends.stop()
    text = await asyncio.to_thread(_get, metrics_url)
    if text is None:
        return float("nan")
    inserted = parse_metrics(text, 0.0).values.get("leadback_segmenter_events_inserted_total", 0.0)
    return max(0.0, produced - inserted)


async def freshness(
    broker: EmbeddedBroker,
    workdir: Path,
    case: Case,
    *,
    seconds: float,
    history: tuple[Path, dict[str, Any]] | None = None,
    startup_timeout_s: float = 7200.0,
    seed: int = 1,
    reuse_startup: bool = False,
    stack_cores: set[int] | None = None,
    python_load: bool = False,
) -> dict[str, Any]:
    """One freshness run of ``case``; ``history``: the cache directory and manifest of
    ``case.history`` stored events (None when 0). ``reuse_startup``: start from the database
    a previous run of the same point kept once its audiences were live, or keep one
    (:func:`bench.history_cache.ready_home`); ``startup_s`` is then that of the run that made
    it, and ``reused_startup`` says so. ``stack_cores``: where the segmenter and ingest run
    (default: :data:`~bench.common.CORE_SERVER` alone). The load is sent by ``wrk``
    (:mod:`bench.paced_load`), or from this process with ``python_load`` (as before
    2026-12-01: it took about 0.45 of a core at 5,000 pixels/s)."""
    cores = stack_cores if stack_cores is not None else {CORE_SERVER}
    rid = uuid.uuid4().hex[:8]
    names = {k: f"fr-{k}-{rid}" for k in ("events", "invalid", "changes")}
    await ensure_topics(
        broker.bootstrap,
        {names["events"]: PARTITIONS, names["invalid"]: 1, names["changes"]: CHANGE_PARTITIONS},
    )
    chdb = workdir / f"fresh-{rid}"
    sites = audience_sites(case.audiences)
    keys = {s: {"write_key": f"bench-key-{s}-0123456789"} for s in sites}
    site_env = {"LEADBACK_SITES": json.dumps(keys)}
    document = many_audiences_yaml(case.audiences) + probe_yaml(sites[0])
    ready = ready_home(*history, document) if reuse_startup and history is not None else None
    reused = ready is not None and ready_copy(ready)
    if ready is not None and reused:
        clone(ready, chdb)
    elif history is not None:
        clone(history[0], chdb)
    if history is not None:
        shape = shape_of(history[1])
    else:
        shape = HistoryShape(events=0, visitors=VISITORS_WITHOUT_HISTORY)
    apply_audiences_offline(chdb, document, site_env)
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        **site_env,
        "LEADBACK_KAFKA_BOOTSTRAP": broker.bootstrap,
        "LEADBACK_KAFKA_IDEMPOTENT": "false",
        "LEADBACK_KAFKA_TOPIC_EVENTS": names["events"],
        "LEADBACK_KAFKA_TOPIC_INVALID": names["invalid"],
        "LEADBACK_KAFKA_TOPIC_CHANGES": names["changes"],
        "LEADBACK_CLICKHOUSE_URL": f"chdb://{chdb}",
        "LEADBACK_SEGMENTER_GROUP_ID": f"fr-{rid}",
        "LEADBACK_SEGMENTER_METRICS_PORT": str(metrics_port),
        "LEADBACK_ADMIN_PORT": "0",
        "LEADBACK_INGEST_PORT": str(port),
        "LEADBACK_DATA_DIR": str(workdir / rid),
        "LEADBACK_LOG_LEVEL": "warning",
    }
    py = [sys.executable, "-m", "leadback"]
    segmenter = spawn([*py, "segmenter"], cores=cores, env=env, stdout=None, stderr=None)
    made_s = None
    if ready is not None and not reused:
        # The start-up over the history, once: then the database is kept as it stands.
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        try:
            made_s = await _wait_metrics(metrics_url, segmenter, startup_timeout_s)
            made_s += await _wait_settled(metrics_url, segmenter, startup_timeout_s)
        finally:
            stop(segmenter, 120)
        keep_ready(chdb, ready, startup_s=made_s)
        segmenter = spawn([*py, "segmenter"], cores=cores, env=env, stdout=None, stderr=None)
    elif ready is not None:
        made_s = ready_startup_s(ready)
    ingest = spawn([*py, "ingest"], cores=cores, env=env, stdout=None, stderr=None)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    watcher: asyncio.Task[None] | None = None
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        startup_s = await _wait_metrics(metrics_url, segmenter, startup_timeout_s)
        settle_s = await _wait_settled(metrics_url, segmenter, startup_timeout_s)
        # From the end of the change topic: the start-up evaluation's changes are not read.
        await consumer.start()
        tps = [TopicPartition(names["changes"], p) for p in range(CHANGE_PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        arrived: dict[str, float] = {}
        evaluated: dict[str, float] = {}

        async def watch() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for records in batch.values():
                    for r in records:
                        if b'"probe"' not in r.value:  # most changes: not parsed
                            continue
                        change = orjson.loads(r.value)
                        if change["audience_id"] == PROBE_ID and change["change"] == "enter":
                            arrived.setdefault(change["visitor_id"], now)
                            evaluated.setdefault(change["visitor_id"], _wall(change["at"]))

        watcher = asyncio.create_task(watch())
        uas = user_agents(seed=seed + 2)

        def probe_request(vid: str) -> bytes:
            return (
                f"GET /p.gif?site={sites[0]}&type=lead&aid={vid}&url=https%3A%2F%2F{sites[0]}"
                f".example%2Fprobe%2F HTTP/1.1\r\nHost: x\r\n"
                f"User-Agent: {uas[int(vid[-6:], 16) % len(uas)]}\r\n\r\n"
            ).encode()

        sent: dict[str, float] = {}
        sent_wall: dict[str, float] = {}

        async def probes(until: float, first: int, record: bool) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            n = first
            while time.perf_counter() < until:
                vid = f"{rid}{n:024x}"
                writer.write(probe_request(vid))
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(43)
                assert head.startswith(b"HTTP/1.1 200"), head
                if record:
                    sent[vid] = time.perf_counter()
                    sent_wall[vid] = time.time()
                else:
                    warm.add(vid)
                n += 1
                await asyncio.sleep(PROBE_EVERY_S if record else 0.5)
            writer.close()

        load = LoadMaker(shape, sites, seed=seed)
        # The requests of the measured load are made before any load runs (wrk sends them).
        measured_requests = warm_requests = None
        if not python_load:
            measured_requests = write_requests(
                workdir / f"load-{rid}.bin", load, int(case.rate * (seconds + 1))
            )
            warm_requests = write_requests(
                workdir / f"warm-{rid}.bin", load, int(case.rate * (WARMUP_REUSED_MIN_S + 4))
            )
        warm_sent = [0]

        async def send_load(chunk_s: float, requests: Path | None) -> LoadResult:
            if requests is None:
                return await run_load(
                    "127.0.0.1", port, load, connections=4, seconds=chunk_s, rate=case.rate
                )
            # Warm-up chunks go on through their file where the last one stopped.
            start = warm_sent[0] if requests == warm_requests else 0
            result = await paced_load(port, requests, rate=case.rate, seconds=chunk_s, start=start)
            warm_sent[0] += result.requests + result.errors
            return result

        # Warm-up: the load runs until a probe sent during it came back (the group joined, the
        # backlog of the start-up evaluation is behind), at least WARMUP_MIN_S.
        warm: set[str] = set()
        t_warm = time.perf_counter()
        while time.perf_counter() - t_warm < startup_timeout_s:
            chunk_end = time.perf_counter() + WARMUP_CHUNK_S
            await asyncio.gather(
                send_load(WARMUP_CHUNK_S, warm_requests),
                probes(chunk_end, 10**15 + len(warm), record=False),
            )
            least = WARMUP_REUSED_MIN_S if ready is not None else WARMUP_MIN_S
            if time.perf_counter() - t_warm >= least and warm & arrived.keys():
                break
        warmup_s = time.perf_counter() - t_warm
        scrapes: list[Scrape] = []
        sampling = asyncio.Event()

        async def scrape() -> None:
            text = await asyncio.to_thread(_get, metrics_url)
            if text is not None:
                scrapes.append(parse_metrics(text, time.perf_counter()))

        async def sample() -> None:
            while not sampling.is_set():
                await scrape()
                await asyncio.sleep(SCRAPE_EVERY_S)

        t_end = time.perf_counter() + seconds
        load_run = asyncio.create_task(send_load(seconds, measured_requests))
        sampler = asyncio.create_task(sample())
        threads0 = {n: thread_cpu_of(p.pid) for n, p in (("seg", segmenter), ("ing", ingest))}
        cpu_t0 = time.perf_counter()
        own0 = _own_cpu_s()
        await probes(t_end, 0, record=True)
        load_result = await load_run
        # What each service used of the core they share during the load (by thread name).
        cpu_s = time.perf_counter() - cpu_t0
        # This process (probes, the change watcher, a Python load) and the wrk it waited for.
        load_cores = (_own_cpu_s() - own0) / cpu_s
        threads = {
            n: {
                k: round((v - threads0[n].get(k, 0.0)) / cpu_s, 3)
                for k, v in sorted(thread_cpu_of(p.pid).items(), key=lambda kv: -kv[1])
            }
            for n, p in (("seg", segmenter), ("ing", ingest))
        }
        lag_events = await _lag(broker, names["events"], metrics_url)
        # The probes still on their way: wait while they keep arriving (a segmenter that falls
        # behind delivers them late, not never), at most DRAIN_MAX_S. The metrics are read
        # until the last one came: the segmenter's events/s is what it committed from the start
        # of the load to then (the offered rate if it keeps up, its capacity if it falls behind;
        # a short window alone would miss rounds longer than the window).
        drain_end = time.perf_counter() + DRAIN_MAX_S
        progress_at, seen = time.perf_counter(), 0
        while time.perf_counter() < min(drain_end, progress_at + DRAIN_STALL_S):
            got = len(sent.keys() & arrived.keys())
            if got == len(sent):
                break
            if got > seen:
                progress_at, seen = time.perf_counter(), got
            await asyncio.sleep(0.1)
        sampling.set()
        await sampler
        await scrape()
    finally:
        if watcher is not None:
            watcher.cancel()
        await consumer.stop()
        stop(ingest, 60)
        stop(segmenter, 120)
        shutil.rmtree(chdb, ignore_errors=True)
    lat = sorted((arrived[v] - t) for v, t in sent.items() if v in arrived)
    # In send order: whether freshness grew during the run (a segmenter falling behind).
    ordered = [
        arrived[v] - t for v, t in sorted(sent.items(), key=lambda kv: kv[1]) if v in arrived
    ]
    fifth = max(1, len(ordered) // 5)
    trend = (
        statistics.median(ordered[-fifth:]) - statistics.median(ordered[:fifth])
        if ordered
        else float("nan")
    )
    to_eval = sorted((evaluated[v] - t) for v, t in sent_wall.items() if v in evaluated)
    return {
        "history": case.history,
        "audiences": case.audiences,
        "sites": len(sites),
        "rate": case.rate,
        "probes": len(sent),
        "arrived": len(lat),  # the percentiles are of these: a lower bound if some are missing
        "p50_s": lat[len(lat) // 2] if lat else float("nan"),
        "p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "max_s": lat[-1] if lat else float("nan"),
        "trend_s": trend,  # median of the last fifth of probes minus that of the first fifth
        # Events waiting for the segmenter when the load stopped, in seconds of the load.
        "lag_s": lag_events / max(1.0, (load_result.requests + len(sent)) / seconds),
        "pixel_to_evaluation_p50_s": to_eval[len(to_eval) // 2] if to_eval else float("nan"),
        "load_rps": load_result.rate,
        "load_errors": load_result.errors,
        "offered_per_s": (load_result.requests + len(sent)) / seconds,
        "measured_s": scrapes[-1].at - scrapes[0].at if len(scrapes) > 1 else 0.0,
        "startup_s": made_s if made_s is not None else startup_s,
        "reused_startup": reused,
        "settle_s": settle_s,
        "warmup_s": warmup_s,
        # Cores used during the load, and per thread name (chDB's pools, ``python``...).
        "segmenter_cores": round(sum(threads["seg"].values()), 3),
        "ingest_cores": round(sum(threads["ing"].values()), 3),
        "load_sender": "python" if python_load else "wrk",
        "load_cores": round(load_cores, 3),
        "segmenter_threads_cores": {k: v for k, v in threads["seg"].items() if v >= 0.005},
        **metric_figures(scrapes),
    }
