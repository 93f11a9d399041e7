"""Versioned schema migrations, applied in order by the services that own the tables.

Each ``migrations/NNNN_name.sql`` file holds statements separated by ``;`` with ``{db}``,
``{ttl_days}``, ``{ttl_seconds}`` and ``{dedup_window}`` placeholders. Applied versions are
recorded in ``schema_migrations``; statements are idempotent (``IF NOT EXISTS``), so two
services starting at once are harmless.

A migration that cannot be written idempotently (a table rebuilt and swapped in) starts with a
guard line, ``-- skip_if: <SELECT>``: when the query returns a row whose first value is 1, the
migration's work is already done (a process died after the work and before recording it) and
it is only recorded. Its statements are each safe to run again (``DROP TABLE IF EXISTS`` of
the work table first), so a crash anywhere before the guard turns true is retried from the
start. Such a rebuild must not run in two processes at once: see
``0004_event_time.sql``. A rebuilt table that views write into names them with a
``-- drop_views: <prefix>`` line: the views of the database whose names start with it are dropped
before the statements run (their owner creates them again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# ClickHouse shows a TTL as `toIntervalDay(N)`; a statement may say `INTERVAL N DAY`.
_TTL = re.compile(r"INTERVAL\s+(\d+)\s+DAY|toIntervalDay\((\d+)\)", re.IGNORECASE)
#: Tables that keep what the events TTL allows, with the moment each row expires from.
_TTL_TABLES = {
    "events": "toDateTime(occurred_at)",
    "person_signals": "toDateTime(intDiv(last_t, 1000))",  # a row goes with its last event
}
_SKIP_IF = re.compile(r"^\s*--\s*skip_if:\s*(.+?)\s*$", re.MULTILINE)
_DROP_VIEWS = re.compile(r"^\s*--\s*drop_views:\s*([A-Za-z0-9_]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, **params: object) -> list[str]:
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip().format(**params) for s in body.split(";") if s.strip()]

    def skip_if(self, **params: object) -> str | None:
        """The guard query (``-- skip_if: SELECT ...``), if the migration has one."""
        match = _SKIP_IF.search(self.sql)
        return match.group(1).format(**params) if match else None

    def drop_views(self) -> str | None:
        """The name prefix of the views to drop first (``-- drop_views: <prefix>``), if any."""
        match = _DROP_VIEWS.search(self.sql)
        return match.group(1) if match else None


def available() -> list[Migration]:
    """Every migration shipped with the package, oldest first."""
    found: list[Migration] = []
    for entry in resources.files("leadback.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(store: ClickHouseStore) -> list[int]:
    """Apply the migrations not applied yet; return their versions. Also keeps the TTL of the
    events and of ``person_signals`` equal to the configured one."""
    db = store.database
    await store.connect()
    await store.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {int(r[0]) for r in await store.query(f"SELECT version FROM {db}.schema_migrations")}
    params = {
        "db": db,
        "ttl_days": store.settings.events_ttl_days,
        "ttl_seconds": store.settings.events_ttl_days * 86_400,
        "dedup_window": store.settings.dedup_window_blocks,
    }
    applied: list[int] = []
    for migration in available():
        if migration.version in done:
            continue
        if await _already_done(store, migration.skip_if(**params)):
            log.info("migration found done", version=migration.version, name=migration.name)
        else:
            prefix = migration.drop_views()
            if prefix is not None:
                await _drop_views(store, prefix)
            for statement in migration.statements(**params):
                await store.command(statement)
        await store.command(
            f"INSERT INTO {db}.schema_migrations (version, name) VALUES "
            f"({migration.version}, '{migration.name}')"
        )
        applied.append(migration.version)
        log.info("migration applied", version=migration.version, name=migration.name)
    await _ensure_ttls(store)
    return applied


async def _drop_views(store: ClickHouseStore, prefix: str) -> None:
    rows = await store.query(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND startsWith(name, {p:String})",
        {"db": store.database, "p": prefix},
    )
    for row in rows:
        await store.command(f"DROP VIEW IF EXISTS {store.database}.{row[0]}")
        log.info("view dropped for a migration", view=str(row[0]))


async def _already_done(store: ClickHouseStore, guard: str | None) -> bool:
    if guard is None:
        return False
    rows = await store.query(guard)
    return bool(rows) and rows[0][0] == 1


async def _ensure_ttls(store: ClickHouseStore) -> None:
    """Keep the TTL of the events (and of the state derived from them) equal to the setting."""
    wanted = store.settings.events_ttl_days
    for table, expires in _TTL_TABLES.items():
        rows = await store.query(
            "SELECT create_table_query FROM system.tables WHERE database = {db:String} "
            "AND name = {t:String}",
            {"db": store.database, "t": table},
        )
        if not rows:
            continue
        match = _TTL.search(str(rows[0][0]))
        days = int(match.group(1) or match.group(2)) if match else None
        if days != wanted:
            await store.command(
                f"ALTER TABLE {store.database}.{table} MODIFY TTL {expires} + INTERVAL {wanted} DAY"
            )
            log.info("TTL changed", table=table, days=wanted)
