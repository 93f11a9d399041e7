"""Reads behind the admin API: audience sizes, member pages, exports, size over time.

All of it is ClickHouse SQL over ``memberships`` (read ``FINAL``: the latest version of each
membership, ``state = 'in'`` for members) and ``audience_changes``. Member lists are paged by
keyset on ``person_id`` (the table's sort key after site and audience), so page N costs what
page 1 costs and an export never holds a whole audience in memory.
"""

from __future__ import annotations

import binascii
import csv
import io
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from leadback.errors import InvalidInputError
from leadback.events import format_ts
from leadback.store.client import ClickHouseStore

MAX_BUCKETS = 10_000
EXPORT_COLUMNS = ("visitor_id", "entered_at", "products", "email_sha256", "phone_sha256")


@dataclass(frozen=True)
class Member:
    """One member: the person (an anonymous visitor id or ``u:<user_id>``)."""

    person_id: str
    entered_at: int  # Unix ms
    products: list[str]
    version: int


@dataclass(frozen=True)
class ExportRow:
    member: Member
    email_sha256: str
    phone_sha256: str


@dataclass(frozen=True)
class Bucket:
    start: int  # Unix ms
    enters: int
    exits: int
    size: int  # members at the end of the bucket


def encode_cursor(person_id: str) -> str:
    """The opaque cursor for "after this person"."""
    return urlsafe_b64encode(person_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        return urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(
            "invalid_cursor", "not a cursor from a previous page", field="cursor"
        ) from exc


class MemberQueries:
    """The admin API's reads, for one database."""

    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store
        self._db = store.database

    async def sizes(self, site: str | None = None) -> dict[tuple[str, str], int]:
        """(site, audience) -> member count, in one statement."""
        where = "state = 'in'"
        params: dict[str, str] = {}
        if site is not None:
            where += " AND site_id = {s:String}"
            params["s"] = site
        rows = await self._store.query(
            f"SELECT site_id, audience_id, count() FROM {self._db}.memberships FINAL "
            f"WHERE {where} GROUP BY site_id, audience_id",
            params,
        )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    async def size(self, site: str, audience_id: str) -> int:
        rows = await self._store.query(
            f"SELECT count() FROM {self._db}.memberships FINAL WHERE site_id = {{s:String}} "
            "AND audience_id = {a:String} AND state = 'in'",
            {"s": site, "a": audience_id},
        )
        return int(rows[0][0]) if rows else 0

    async def page(self, site: str, audience_id: str, *, after: str, limit: int) -> list[Member]:
        """Up to ``limit`` members whose person id sorts after ``after``, in that order."""
        rows = await self._store.query(
            f"SELECT person_id, entered_at, products, version FROM {self._db}.memberships FINAL "
            "WHERE site_id = {s:String} AND audience_id = {a:String} AND state = 'in' "
            "AND person_id > {after:String} ORDER BY person_id LIMIT {limit:UInt32}",
            {"s": site, "a": audience_id, "after": after, "limit": limit},
        )
        return [Member(str(p), int(e), list(pr), int(v)) for p, e, pr, v in rows]

    async def contacts(self, site: str, persons: list[str]) -> dict[str, tuple[str, str]]:
        """person -> (email_sha256, phone_sha256), any non-empty one among the person's
        visitors (identities, latest version per visitor; the person id is a visitor too).
        Only the hashes leave ClickHouse, never the encrypted contact details."""
        if not persons:
            return {}
        db = self._db
        rows = await self._store.query(
            f"""
            SELECT vp.person,
                   anyIf(c.email, c.email != ''),
                   anyIf(c.phone, c.phone != '')
            FROM (
                SELECT visitor_id, person FROM (
                    SELECT visitor_id, argMax(person_id, version) AS person
                    FROM {db}.identities
                    WHERE site_id = {{s:String}} AND visitor_id IN (
                        SELECT visitor_id FROM {db}.identities
                        WHERE site_id = {{s:String}} AND person_id IN {{p:Array(String)}})
                    GROUP BY visitor_id)
                WHERE person IN {{p:Array(String)}}
                UNION ALL
                SELECT arrayJoin({{p:Array(String)}}) AS visitor_id, visitor_id AS person
            ) AS vp
            INNER JOIN (
                SELECT visitor_id,
                       JSONExtractString(t, 'email_sha256') AS email,
                       JSONExtractString(t, 'phone_sha256') AS phone
                FROM (
                    SELECT visitor_id, argMax(traits, updated_at) AS t FROM {db}.contacts
                    WHERE site_id = {{s:String}} AND (visitor_id IN {{p:Array(String)}}
                        OR visitor_id IN (
                            SELECT visitor_id FROM {db}.identities
                            WHERE site_id = {{s:String}} AND person_id IN {{p:Array(String)}}))
                    GROUP BY visitor_id)
            ) AS c ON c.visitor_id = vp.visitor_id
            GROUP BY vp.person
            """,
            {"s": site, "p": persons},
        )
        return {str(r[0]): (str(r[1]), str(r[2])) for r in rows}

    async def export(
        self, site: str, audience_id: str, *, page_size: int = 5000
    ) -> AsyncIterator[ExportRow]:
        """Every member with its contact hashes, a page at a time."""
        after = ""
        while True:
            members = await self.page(site, audience_id, after=after, limit=page_size)
            if not members:
                return
            contacts = await self.contacts(site, [m.person_id for m in members])
            for m in members:
                email, phone = contacts.get(m.person_id, ("", ""))
                yield ExportRow(m, email, phone)
            if len(members) < page_size:
                return
            after = members[-1].person_id

    async def size_over_time(
        self, site: str, audience_id: str, *, start: int, end: int, step: int
    ) -> list[Bucket]:
        """Enters, exits and the size at the end of each ``step`` from ``start`` to ``end``
        (Unix ms). Changes before ``start`` go into bucket -1, so the running sum (a window
        function) starts from the size at ``start``; empty buckets come from ``numbers``."""
        count = -(-(end - start) // step)
        if count <= 0:
            raise InvalidInputError("invalid_range", "`from` must be before `to`", field="from")
        if count > MAX_BUCKETS:
            raise InvalidInputError(
                "invalid_range", f"{count} buckets; at most {MAX_BUCKETS}", field="step"
            )
        rows = await self._store.query(
            f"""
            SELECT b, enters, exits, size FROM (
                SELECT b, enters, exits,
                       sum(enters - exits) OVER (ORDER BY b
                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS size
                FROM (
                    SELECT b, toInt64(sum(e)) AS enters, toInt64(sum(x)) AS exits FROM (
                        SELECT toInt64(number) - 1 AS b, 0 AS e, 0 AS x
                        FROM numbers({{n:UInt32}} + 1)
                        UNION ALL
                        SELECT if(at < {{start:Int64}}, -1,
                                  intDiv(at - {{start:Int64}}, {{step:Int64}})) AS b,
                               change = 'enter' AS e, change = 'exit' AS x
                        FROM {self._db}.audience_changes
                        WHERE site_id = {{s:String}} AND audience_id = {{a:String}}
                          AND at < {{end:Int64}} AND change IN ('enter', 'exit')
                    )
                    GROUP BY b
                )
            )
            WHERE b >= 0
            ORDER BY b
            """,
            {"s": site, "a": audience_id, "start": start, "end": end, "step": step, "n": count},
        )
        return [Bucket(start + int(b) * step, int(e), int(x), int(s)) for b, e, x, s in rows]


# -- export encodings ------------------------------------------------------------------------


def _ts(ms: int) -> str:
    return format_ts(ms / 1000)


_FLUSH_ROWS = 1000


async def export_csv(members: MemberQueries, site: str, audience_id: str) -> AsyncIterator[bytes]:
    """CSV with a header row; products ``|``-joined; a missing hash is an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    n = 0
    async for row in members.export(site, audience_id):
        m = row.member
        writer.writerow(
            [
                m.person_id,
                _ts(m.entered_at),
                "|".join(m.products),
                row.email_sha256,
                row.phone_sha256,
            ]
        )
        n += 1
        if n % _FLUSH_ROWS == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


async def export_jsonl(members: MemberQueries, site: str, audience_id: str) -> AsyncIterator[bytes]:
    """One JSON object per line; products a list; a missing hash is null."""
    chunk: list[bytes] = []
    async for row in members.export(site, audience_id):
        m = row.member
        doc = {
            "visitor_id": m.person_id,
            "entered_at": _ts(m.entered_at),
            "products": m.products,
            "email_sha256": row.email_sha256 or None,
            "phone_sha256": row.phone_sha256 or None,
        }
        chunk.append(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
        if len(chunk) >= _FLUSH_ROWS:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
