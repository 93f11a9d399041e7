"""The ClickHouse adapter. Same code for ``chdb://`` (in process) and ``http(s)://`` servers.

clickhouse-connect's client is synchronous (and its async client does not support chDB), so
every call runs on one dedicated worker thread: the event loop stays free for Kafka heartbeats,
and calls on one client never overlap. Errors are translated here into
:class:`StoreUnavailableError` (retry) or :class:`StoreRejectedError` (do not retry the same).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import clickhouse_connect
import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from leadback.errors import StoreRejectedError, StoreUnavailableError
from leadback.settings import ClickHouseSettings

T = TypeVar("T")

# ClickHouse error codes that say "the data or the statement is wrong", not "try later".
_PERMANENT_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        62,  # SYNTAX_ERROR
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        232,  # CANNOT_PARSE_ELEMENT? (kept: parse family)
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        444,  # CANNOT_PARSE_UUID? (parse family)
    }
)
_CODE = re.compile(r"(?:Code:|code:)\s*(\d+)")


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def translate(exc: Exception, what: str) -> Exception:
    """clickhouse-connect/chdb error -> Leadback error (retryable or permanent)."""
    code = _error_code(exc)
    if code in _PERMANENT_CODES:
        return StoreRejectedError(f"{what}: {exc}", code=code)
    if isinstance(exc, OperationalError):
        return StoreUnavailableError(f"{what}: {exc}")
    if isinstance(exc, DatabaseError) and code is not None:
        # Other server-side errors (too many parts, memory limits, readonly...) pass with time.
        return StoreUnavailableError(f"{what}: {exc}")
    if isinstance(exc, ClickHouseError | OSError):
        return StoreUnavailableError(f"{what}: {exc}")
    return StoreRejectedError(f"{what}: {exc}", code=code)


# A round writes its persons' ids into the statement's text (`store/literals.py`): thousands of
# them pass ClickHouse's default 256 KiB limit on a query's text.
_SETTINGS = {"max_query_size": 64 * 1024 * 1024}


# Numbers as JSON numbers (orjson reads 64-bit integers), whatever the server's default.
_JSON_OUT = "SETTINGS output_format_json_quote_64bit_integers = 0"


def _chdb_settings() -> dict[str, int]:
    """Settings of the in-process engine, its query threads limited to the cores this process
    may run on: chDB counts the machine's, so pinned to one core (as the benchmarks pin the
    segmenter) its queries ran two threads that took turns on it."""
    settings = dict(_SETTINGS)
    if hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))
        if allowed < (os.cpu_count() or allowed):
            settings["max_threads"] = allowed
    return settings


def _connect(settings: ClickHouseSettings) -> Client:
    try:
        if settings.is_chdb:
            # chdb://relative/dir and chdb:///abs/dir both name a directory.
            directory = Path(settings.url.removeprefix("chdb://")).expanduser().resolve()
            directory.mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(
                dsn=f"chdb://{directory}", settings=_chdb_settings()
            )
        return clickhouse_connect.get_client(
            dsn=settings.url,
            username=settings.username,
            password=settings.password.get_secret_value(),
            connect_timeout=settings.connect_timeout_s,
            send_receive_timeout=settings.query_timeout_s,
            autogenerate_session_id=False,
            settings=_SETTINGS,
        )
    except Exception as exc:
        raise translate(exc, f"connect to {settings.url}") from exc


class ClickHouseStore:
    """Async facade over one clickhouse-connect client, bound to Leadback's database."""

    def __init__(self, settings: ClickHouseSettings) -> None:
        self.settings = settings
        self.database = settings.database
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Client | None = None

    async def _run(self, what: str, fn: Callable[[Client], T]) -> T:
        def call() -> T:
            if self._client is None:
                self._client = _connect(self.settings)
            try:
                return fn(self._client)
            except Exception as exc:
                raise translate(exc, what) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def connect(self) -> None:
        """Open the client and make sure the database exists."""
        await self._run(
            "create database",
            lambda c: c.command(f"CREATE DATABASE IF NOT EXISTS {self.database}"),
        )

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing useful (DDL, ALTER, ...)."""
        await self._run(sql.split("\n", 1)[0][:80], lambda c: c.command(sql, parameters))

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        """Rows of a SELECT."""
        rows: Sequence[Sequence[Any]] = await self._run(
            sql.split("\n", 1)[0][:80], lambda c: c.query(sql, parameters).result_rows
        )
        return rows

    async def query_columns(
        self, sql: str, parameters: dict[str, Any] | None = None, *, width: int
    ) -> list[list[Any]]:
        """The ``width`` columns of a SELECT as lists, for results of tens of thousands of
        rows: read as one JSON text (``JSONCompactColumns``) parsed by orjson, which costs
        about a third of turning the same rows into Python values column by column the way
        :meth:`query` does. Strings must be valid UTF-8 (all Leadback's are: they came in as
        JSON), and ``sql`` must not end with a ``SETTINGS`` clause of its own (one is added)."""

        def read(c: Client) -> list[list[Any]]:
            # The setting in the statement: passed as a per-call setting, the chDB backend
            # reads, sets and restores it around the call (about 4 ms more a call).
            text = c.raw_query(f"{sql}\n{_JSON_OUT}", parameters, fmt="JSONCompactColumns")
            columns: list[list[Any]] = orjson.loads(text)
            # No rows: ClickHouse writes `[]`, not `width` empty columns.
            return columns or [[] for _ in range(width)]

        return await self._run(sql.split("\n", 1)[0][:80], read)

    async def insert_json_rows(
        self, table: str, data: bytes, *, dedup_token: str, settings: dict[str, Any] | None = None
    ) -> None:
        """Insert newline-separated JSON objects (JSONEachRow) in one block.

        ``dedup_token`` makes a retry of the same data a no-op (the table keeps a window of
        recent tokens), including in materialized views that carry the same setting.
        """
        all_settings: dict[str, Any] = {
            "insert_deduplicate": 1,
            "insert_deduplication_token": dedup_token,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            "input_format_skip_unknown_fields": 1,
            "input_format_null_as_default": 1,
            "date_time_input_format": "best_effort",
        }
        if settings:
            all_settings.update(settings)
        await self._run(
            f"insert into {table}",
            lambda c: c.raw_insert(
                f"{self.database}.{table}",
                insert_block=data,
                fmt="JSONEachRow",
                settings=all_settings,
            ),
        )

    async def close(self) -> None:
        """Close the client and stop the worker thread."""

        def close_client() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close_client)
        self._executor.shutdown(wait=True)


def content_token(table: str, body: bytes) -> str:
    """A deduplication token naming ``body`` itself: a retried insert of the same rows (after
    a timeout that may have landed) is dropped, while any different rows are not."""
    return f"{table}:{hashlib.sha256(body).hexdigest()}"
