"""Filled histories kept between benchmark runs, and per-run copies of them.

Filling 50M events takes minutes, so each size is filled once into
``bench/.data/history-<events>/chdb`` (a chDB directory, database ``leadback``) with a
``manifest.json`` beside it (the shape, the schema it was filled with, the fill's figures). A run
never writes into the cache: it gets a copy (:func:`clone`) whose part files are hard links
(ClickHouse never changes a part's files in place: merges and mutations write new parts, and
ClickHouse itself hard-links unchanged files), so a copy of 50M events costs a fraction of a
second and no disk space until the run's merges rewrite parts.

A cache is filled again when its manifest does not match: other size, seed, days or sites, a
different set of migrations (the schema changed, e.g. an ``occurred_at`` column), or older than
``max_age_days`` (history ends when it was filled; an old one would lack its most recent days).
Delete ``bench/.data`` to drop them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.history import HISTORY_SITES, HistoryShape
from bench.procs import all_cores, spawn
from leadback.store.migrations import available

DATA = Path(__file__).parent / ".data"
_DEPTH_IN_PART = 5  # store/<abc>/<uuid>/<part>/<file>: files of a data part


def schema_digest() -> str:
    """A short hash of the migrations shipped with Leadback: the schema a history was filled for."""
    h = hashlib.sha256()
    for m in available():
        h.update(f"{m.version}:{m.name}:{m.sql}".encode())
    return h.hexdigest()[:12]


def _wanted(events: int, seed: int, days: int, skew: float) -> dict[str, Any]:
    return {
        "events": events,
        "seed": seed,
        "days": days,
        "skew": skew,
        "sites": [name for name, _ in HISTORY_SITES],
        "schema": schema_digest(),
    }


def ensure_history(
    events: int,
    *,
    seed: int = 7,
    days: int = 300,
    skew: float = 3.0,
    max_age_days: float = 7.0,
) -> tuple[Path, dict[str, Any]]:
    """The cache directory of ``events`` stored events (filled now if missing or stale) and its
    manifest. The fill runs as a child process (``python -m bench.history``): one chDB
    directory per process, and this one may hold another."""
    name = f"history-{events}" if skew == 3.0 else f"history-{events}-skew{skew:g}"
    home = DATA / name
    manifest_path = home / "manifest.json"
    wanted = _wanted(events, seed, days, skew)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        age_days = (time.time() - manifest["filled_at"]) / 86_400
        if {k: manifest.get(k) for k in wanted} == wanted and age_days <= max_age_days:
            print(f"  history: {events:,} events from {home} (filled {age_days:.1f} days ago)")
            return home, manifest
        print(f"  history: {home} is stale (other shape, schema or older than {max_age_days} d)")
    staging = DATA / f"{name}.filling"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    print(f"  history: filling {events:,} events into {home} (once; kept for later runs)")
    proc = spawn(
        [
            sys.executable,
            "-m",
            "bench.history",
            "--dsn",
            f"chdb://{staging / 'chdb'}",
            "--events",
            str(events),
            "--seed",
            str(seed),
            "--days",
            str(days),
            "--skew",
            str(skew),
            "--manifest",
            str(staging / "manifest.json"),
        ],
        cores=all_cores(),
        env={**os.environ, "LEADBACK_LOG_LEVEL": "warning"},
        stdout=None,
    )
    if proc.wait() != 0:
        raise RuntimeError(f"filling the history failed (exit {proc.returncode})")
    manifest = {**json.loads((staging / "manifest.json").read_text()), **wanted}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(home, ignore_errors=True)
    staging.rename(home)
    return home, manifest


def shape_of(manifest: dict[str, Any]) -> HistoryShape:
    """The shape a manifest describes (to draw returning visitors from)."""
    weights = dict(HISTORY_SITES)
    return HistoryShape(
        events=manifest["events"],
        visitors=manifest["visitors"],
        days=manifest["days"],
        sites=[(s, weights[s]) for s in manifest["sites"]],
        seed=manifest["seed"],
        skew=manifest["skew"],
    )


def _link_or_copy(src: str, dst: str) -> None:
    rel = Path(src).parts
    if "store" in rel and len(rel) - rel.index("store") >= _DEPTH_IN_PART:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system: copy
    shutil.copy2(src, dst)


def clone(home: Path, target: Path) -> None:
    """A chDB directory at ``target`` holding the cached history: part files hard-linked,
    everything else (metadata, format files) copied; symlinks (relative) kept as links."""
    shutil.copytree(home / "chdb", target, symlinks=True, copy_function=_link_or_copy)


def disk_usage(path: Path) -> int:
    """Bytes under ``path`` as ``du`` counts them (hard links once)."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, check=True, timeout=300)
    return int(out.stdout.split()[0])


# -- databases past the start-up ----------------------------------------------------------------
# A freshness run on a long history spends minutes bringing its audiences live (every signal
# backfilled, everyone evaluated: 9 to 11 minutes at 50M with 500 audiences) before seconds of
# measured load. With `--reuse-startup` the first run of a point keeps a copy of its database as
# it stood once the start-up was over; later runs of the same point start from that copy. The
# copy names the history fill, the audience document and the schema it was made with, and is
# dropped when older than READY_MAX_AGE_S (its due times pile up: the first timer pass after a
# start evaluates everyone who came due meanwhile).

READY_MAX_AGE_S = 6 * 3600.0


def ready_home(history_home: Path, manifest: dict[str, Any], document: str) -> Path:
    """Where the database of ``document``'s audiences live over this history is kept."""
    key = hashlib.sha256(
        f"{manifest.get('filled_at')}:{schema_digest()}:{document}".encode()
    ).hexdigest()[:12]
    return DATA / f"ready-{history_home.name}-{key}"


def ready_copy(home: Path) -> bool:
    """Whether ``home`` holds a usable copy (dropped when too old)."""
    stamp = home / "made_at"
    if not stamp.exists():
        return False
    if time.time() - float(stamp.read_text()) > READY_MAX_AGE_S:
        shutil.rmtree(home, ignore_errors=True)
        return False
    return True


def keep_ready(chdb: Path, home: Path, *, startup_s: float) -> None:
    """Keep a copy of a chDB directory no process holds (parts hard-linked) at ``home``, with
    the seconds its start-up took."""
    staging = home.with_name(home.name + ".making")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copytree(chdb, staging / "chdb", symlinks=True, copy_function=_link_or_copy)
    (staging / "startup_s").write_text(str(startup_s))
    (staging / "made_at").write_text(str(time.time()))
    shutil.rmtree(home, ignore_errors=True)
    staging.rename(home)


def ready_startup_s(home: Path) -> float:
    """The start-up seconds of the run that made the copy at ``home``."""
    return float((home / "startup_s").read_text())
