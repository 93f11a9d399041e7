"""The admin API and the ``leadback audiences`` CLI against the real ClickHouse engine.

Events are written as the segmenter writes them and handed to the engine; time comes from a
manual clock. The API is called in process through ``httpx.ASGITransport``; the CLI through a
real uvicorn server on a free port.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from typer.testing import CliRunner

from leadback.admin.app import create_admin_app
from leadback.admin.errors import error_response
from leadback.admin.members import MemberQueries
from leadback.asgi_server import EmbeddedServer
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.repository import AudienceRepository
from leadback.cli import app as cli_app
from leadback.clock import ManualClock
from leadback.errors import StoreUnavailableError
from leadback.events import CanonicalEvent, format_ts
from leadback.identity.contacts import sha256_hex
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import RecordingPublisher, encoded, event
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests-0123456789"
T0 = 1_800_000_000.0  # on an hour boundary
H = 3600.0

SERVER_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
VIEWERS = {"name": "Viewers", "rule": {"did": {"event": "page_view"}}}


class Admin:
    """The app, a client with the token, and a way to feed the engine events."""

    def __init__(
        self,
        settings: Settings,
        store: ClickHouseStore,
        engine: AudienceEngine,
        clock: ManualClock,
        publisher: RecordingPublisher,
        client: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.clock = clock
        self.publisher = publisher
        self.http = client
        self.batches = 0

    async def send(self, *events: CanonicalEvent) -> None:
        self.batches += 1
        token = f"admin-test-{self.batches}"
        keys, values = encoded(events)
        await self.store.insert_json_rows("events", b"\n".join(values), dedup_token=token)
        await self.engine.on_batch(keys, values, token)

    async def put(self, site: str, audience_id: str, body: dict[str, Any]) -> httpx.Response:
        r = await self.http.put(f"/v1/sites/{site}/audiences/{audience_id}", json=body)
        await self.engine.tick()  # what the segmenter does at once when `changed` is set
        return r

    async def count(self, sql: str) -> int:
        rows = await self.store.query(sql.format(db=self.store.database))
        return int(rows[0][0])

    def reasons(self, audience_id: str) -> list[tuple[str, str, str]]:
        return [
            (r["visitor_id"], r["change"], r["reason"])
            for r in self.publisher.records
            if r["audience_id"] == audience_id
        ]


@pytest.fixture
async def admin(
    store: ClickHouseStore, make_settings: Callable[..., Settings]
) -> AsyncIterator[Admin]:
    settings = make_settings(admin={"port": 0, "tokens": [TOKEN]})
    await migrate(store)
    clock = ManualClock(T0)
    publisher = RecordingPublisher()
    repository = AudienceRepository(store, clock=clock)
    engine = AudienceEngine(store, publisher, clock=clock, repository=repository)
    await engine.start()
    app = create_admin_app(settings, engine, store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://admin.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        yield Admin(settings, store, engine, clock, publisher, client)


# -- auth and docs ---------------------------------------------------------------------------


async def test_every_v1_route_needs_the_token_and_docs_do_not(admin: Admin) -> None:
    app = admin.http._transport.app  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test"
    ) as anonymous:
        for method, path in (
            ("GET", "/v1/audiences"),
            ("PUT", "/v1/sites/shop/audiences/x"),
            ("GET", "/v1/sites/shop/audiences/x/members"),
            ("DELETE", "/v1/sites/shop/visitors/v1"),
        ):
            r = await anonymous.request(method, path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"] == "unauthorized"
        wrong = {"Authorization": "Bearer not-the-token"}
        r = await anonymous.get("/v1/audiences", headers=wrong)
        assert r.status_code == 401
        r = await anonymous.get("/v1/audiences", headers={"Authorization": f"Basic {TOKEN}"})
        assert r.status_code == 401
        assert (await anonymous.get("/docs")).status_code == 200
        spec = (await anonymous.get("/openapi.json")).json()
    assert "/v1/sites/{site}/audiences/{audience_id}/members" in spec["paths"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {t["name"] for t in spec["tags"]} == {"audiences", "members", "privacy", "campaigns"}
    assert (await admin.http.get("/v1/audiences")).status_code == 200


def test_store_trouble_is_503_with_retry_after() -> None:
    r = error_response(StoreUnavailableError("chdb: timed out"))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert orjson.loads(r.body)["error"] == "unavailable"


# -- definitions -----------------------------------------------------------------------------


async def test_put_list_get_and_validate(admin: Admin) -> None:
    r = await admin.put("shop", "viewers", VIEWERS)
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["status"], created["version"], created["changed"]) == ("created", 1, True)
    assert created["definition"]["site"] == "shop"
    assert created["definition"]["id"] == "viewers"

    r = await admin.put("shop", "viewers", {**VIEWERS, "site": "shop", "id": "viewers"})
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["version"], r.json()["changed"]) == (
        "unchanged",
        1,
        False,
    )
    admin.clock.advance(60)
    r = await admin.put("shop", "viewers", {**VIEWERS, "ttl": "7d"})
    assert (r.json()["status"], r.json()["version"]) == ("updated", 2)

    r = await admin.put("shop", "viewers", {**VIEWERS, "site": "demo"})
    assert r.status_code == 422
    assert (r.json()["error"], r.json()["field"]) == ("invalid_audience", "site")
    r = await admin.put("nowhere", "viewers", VIEWERS)
    assert (r.status_code, r.json()["error"]) == (404, "unknown_site")

    bad = {"rule": {"all": [{"idle": "soon"}]}}
    r = await admin.put("shop", "broken", bad)
    assert r.status_code == 422
    assert r.json() == {
        "error": "invalid_audience",
        "detail": r.json()["detail"],
        "field": "rule.all[0].idle",
    }
    r = await admin.http.post(
        "/v1/audiences:validate", json={"site": "shop", "id": "broken", **bad}
    )
    assert (r.status_code, r.json()["field"]) == (422, "rule.all[0].idle")
    r = await admin.http.post(
        "/v1/audiences:validate",
        json={"audiences": [{"site": "shop", "id": "ok", **VIEWERS}, {"site": "shop", **bad}]},
    )
    assert (r.status_code, r.json()["field"]) == (422, "audiences[1].id")
    r = await admin.http.post(
        "/v1/audiences:validate",
        json=[{"site": "shop", "id": "ref", "rule": {"in_audience": "missing"}}],
    )
    assert (r.status_code, r.json()["field"]) == (422, "audiences[0].rule")
    assert "missing" in r.json()["detail"]
    r = await admin.http.post(
        "/v1/audiences:validate", json={"site": "shop", "id": "ok", **VIEWERS}
    )
    assert r.json() == {"valid": True, "audiences": 1}

    await admin.send(event("shop", "ann", "page_view", T0), event("shop", "bob", "page_view", T0))
    listed = (await admin.http.get("/v1/audiences")).json()["audiences"]
    assert [(a["site"], a["id"], a["version"], a["members"], a["ttl"]) for a in listed] == [
        ("shop", "viewers", 2, 2, "7d")
    ]  # validation wrote nothing
    assert listed[0]["product_level"] is False
    assert listed[0]["name"] == "Viewers"
    assert (await admin.http.get("/v1/audiences", params={"site": "demo"})).json() == {
        "audiences": []
    }
    r = await admin.http.get("/v1/audiences", params={"site": "nowhere"})
    assert r.status_code == 404

    detail = (await admin.http.get("/v1/sites/shop/audiences/viewers")).json()
    assert (detail["version"], detail["size"]) == (2, 2)
    assert detail["definition"]["rule"]["did"]["event"] == ["page_view"]
    assert detail["updated_at"] == format_ts(T0 + 60)  # the repository's clock, not the wall's
    r = await admin.http.get("/v1/sites/shop/audiences/nope")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")


async def test_apply_validates_all_before_writing_and_orders_references(admin: Admin) -> None:
    both = {
        "audiences": [
            {"site": "shop", "id": "engaged_viewers", "rule": {"in_audience": "viewers"}},
            {"site": "shop", "id": "viewers", **VIEWERS},
        ]
    }
    broken = {
        "audiences": [
            {"site": "shop", "id": "first", **VIEWERS},
            {"site": "shop", "id": "second", "rule": {"did": {"event": "teleport"}}},
        ]
    }
    r = await admin.http.post("/v1/audiences:apply", json=broken)
    assert (r.status_code, r.json()["field"]) == (422, "audiences[1].rule.did.event[0]")
    assert (await admin.http.get("/v1/audiences")).json()["audiences"] == []

    r = await admin.http.post("/v1/audiences:apply", json=both)
    assert r.status_code == 200, r.text
    assert [(a["id"], a["status"]) for a in r.json()["audiences"]] == [
        ("engaged_viewers", "created"),
        ("viewers", "created"),
    ]
    assert admin.engine.changed.is_set()
    r = await admin.http.post("/v1/audiences:apply", json=both)
    assert [a["status"] for a in r.json()["audiences"]] == ["unchanged", "unchanged"]


# The same documents through the API and through `leadback audiences apply --offline`, each
# into an empty database: the same audiences written, or the same first problem reported.
FORWARD_REFERENCE = [  # lists an audience before the one it refers to
    {"site": "demo", "id": "engaged", "rule": {"in_audience": "viewers"}},
    {"site": "demo", "id": "viewers", **VIEWERS},
]
UNKNOWN_REFERENCE = [
    {"site": "demo", "id": "viewers", **VIEWERS},
    {"site": "demo", "id": "engaged", "rule": {"in_audience": "missing"}},
]
CYCLE = [
    {"site": "demo", "id": "a", "rule": {"any": [{"in_audience": "b"}, VIEWERS["rule"]]}},
    {"site": "demo", "id": "b", "rule": {"in_audience": "a"}},
]
UNKNOWN_SITE = {"site": "nowhere", "id": "viewers", **VIEWERS}


async def apply_offline(admin: Admin, tmp_path: Path, document: Any, database: str) -> str:
    """``leadback audiences apply --offline`` into ``database`` (same chDB directory); its
    outcome as ``apply_online`` words it."""
    path = tmp_path / f"{database}.json"
    path.write_bytes(orjson.dumps(document))
    env = {
        "LEADBACK_DATA_DIR": str(tmp_path / "cli"),
        "LEADBACK_CLICKHOUSE_URL": admin.settings.clickhouse.url,
        "LEADBACK_CLICKHOUSE_DATABASE": database,
    }  # the default sites: `demo` only
    args = ["audiences", "apply", "--offline", "-f", str(path)]
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, args, env=env)
    out = [
        line for line in result.stdout.splitlines(keepends=True) if not SERVER_LOG.match(line)
    ]  # log lines of this process (the migrations) land there too
    if result.exit_code:
        assert (result.exit_code, out) == (1, [])
        return result.stderr
    return "".join(line.replace("written ", "changed ") for line in out)


async def apply_online(admin: Admin, document: Any) -> str:
    r = await admin.http.post("/v1/audiences:apply", json=document)
    if r.status_code != 200:
        body = r.json()
        return f"error: {body['error']} at {body['field']}: {body['detail']}\n"
    return "".join(
        f"{'changed' if a['changed'] else 'unchanged'} {a['site']}/{a['id']} "
        f"(version {a['version']})\n"
        for a in r.json()["audiences"]
    )


async def stored(store: ClickHouseStore) -> list[tuple[str, str, int, dict[str, Any]]]:
    return [
        (a.spec.site, a.spec.id, a.version, a.spec.to_document())
        for a in await AudienceRepository(store).all(include_deleted=True)
    ]


@pytest.mark.parametrize(
    ("document", "outcome"),
    [
        (
            FORWARD_REFERENCE,
            "changed demo/engaged (version 1)\nchanged demo/viewers (version 1)\n",
        ),
        (
            {"audiences": UNKNOWN_REFERENCE},
            "error: invalid_audience at audiences[1].rule: "
            "in_audience: no audience 'missing' on this site\n",
        ),
        (
            CYCLE,
            "error: invalid_audience at audiences[0].rule: in_audience cycle: a -> b -> a\n",
        ),
        (UNKNOWN_SITE, "error: unknown_site at site: no site 'nowhere' is configured\n"),
    ],
    ids=["forward_reference", "unknown_reference", "cycle", "unknown_site"],
)
async def test_offline_apply_validates_and_orders_as_the_api_does(
    admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: Any, outcome: str
) -> None:
    # In process, the CLI would point structlog at the runner's captured (then closed) stderr
    # for the rest of the session.
    monkeypatch.setattr("leadback.cli.common.configure_logging", lambda *_, **__: None)
    offline_db = f"{admin.store.database}_offline"
    offline_store = ClickHouseStore(
        admin.settings.clickhouse.model_copy(update={"database": offline_db})
    )
    try:
        assert await apply_online(admin, document) == outcome
        assert await apply_offline(admin, tmp_path, document, offline_db) == outcome
        assert await stored(offline_store) == await stored(admin.store)
        # Applied again: nothing changes, either way.
        if not outcome.startswith("error"):
            again = outcome.replace("changed", "unchanged")
            assert await apply_online(admin, document) == again
            assert await apply_offline(admin, tmp_path, document, offline_db) == again
    finally:
        await offline_store.command(f"DROP DATABASE IF EXISTS {offline_db}")
        await offline_store.close()


async def test_delete_exits_members_and_refuses_audiences_in_use(admin: Admin) -> None:
    await admin.put("shop", "viewers", VIEWERS)
    await admin.put("shop", "engaged", {"rule": {"in_audience": "viewers"}})
    await admin.send(event("shop", "ann", "page_view", T0))
    r = await admin.http.delete("/v1/sites/shop/audiences/viewers")
    assert (r.status_code, r.json()["error"]) == (409, "in_use")
    assert "engaged" in r.json()["detail"]

    admin.engine.changed.clear()
    r = await admin.http.delete("/v1/sites/shop/audiences/engaged")
    assert r.status_code == 200
    assert r.json() == {"site": "shop", "id": "engaged", "version": 2}
    assert admin.engine.changed.is_set()
    await admin.engine.tick()
    assert admin.reasons("engaged") == [
        ("ann", "enter", "qualifies"),
        ("ann", "exit", "audience_deleted"),
    ]
    assert (await admin.http.get("/v1/sites/shop/audiences/engaged")).status_code == 404
    r = await admin.http.delete("/v1/sites/shop/audiences/engaged")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    assert (await admin.http.delete("/v1/sites/shop/audiences/viewers")).status_code == 200


async def test_status_says_when_an_audience_is_live_and_how_far_its_backfill_is(
    admin: Admin,
) -> None:
    await admin.send(*(event("shop", f"h{i}", "page_view", T0 - 86_400) for i in range(40)))
    admin.engine.backfill.rows_per_range = 10
    await admin.http.put("/v1/sites/shop/audiences/viewers", json=VIEWERS)
    [pending] = (await admin.http.get("/v1/audiences:status")).json()["audiences"]
    assert (pending["id"], pending["state"], pending["fraction"]) == ("viewers", "pending", 0.0)
    await admin.engine.tick()
    [live] = (await admin.http.get("/v1/audiences:status?site=shop")).json()["audiences"]
    assert (live["state"], live["fraction"]) == ("live", 1.0)
    assert live["rows_read"] >= 40  # the history, and the events stored around the feed's start
    assert live["total"] >= 1 and live["done"] == live["total"]
    assert (await admin.http.get("/v1/sites/shop/audiences/viewers")).json()["size"] == 40


async def test_explain_shows_the_compiled_sql(admin: Admin) -> None:
    await admin.put("shop", "viewers", VIEWERS)
    r = await admin.http.get("/v1/sites/shop/audiences/viewers/explain")
    assert r.status_code == 200
    body = r.json()
    assert "page_view" in body["signals"]
    [line] = [x for x in body["signals"].splitlines() if "page_view" in x]
    column = line.split(":")[0]
    assert column in body["rule"] and column in body["members"]
    assert "SELECT" in body["members"]
    assert admin.store.database in body["members"]
    assert "memberships FINAL" in body["previous"]


# -- members, export, size -------------------------------------------------------------------


async def test_members_pages_return_everyone_exactly_once(admin: Admin) -> None:
    await admin.put("shop", "viewers", VIEWERS)
    visitors = [f"v{i:03d}" for i in range(23)]
    await admin.send(*(event("shop", v, "page_view", T0) for v in visitors))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        r = await admin.http.get("/v1/sites/shop/audiences/viewers/members", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        seen += [m["visitor_id"] for m in page["members"]]
        for m in page["members"]:
            assert m["entered_at"] == format_ts(T0)
            assert (m["products"], m["version"]) == ([], 1)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == visitors
    r = await admin.http.get(
        "/v1/sites/shop/audiences/viewers/members", params={"cursor": "%%%not-a-cursor"}
    )
    assert (r.status_code, r.json()["error"]) == (422, "invalid_cursor")
    r = await admin.http.get("/v1/sites/shop/audiences/viewers/members", params={"limit": 0})
    assert (r.status_code, r.json()["field"]) == (422, "limit")


async def test_export_has_products_and_contact_hashes_never_encrypted_details(
    admin: Admin,
) -> None:
    await admin.put(
        "shop",
        "product_viewers",
        {"products": {"property": "product_id"}, "rule": {"did": {"event": "product_view"}}},
    )
    email = sha256_hex("ann@example.com")
    phone = sha256_hex("+14155550123")
    await admin.send(
        event(
            "shop",
            "ann",
            "identify",
            T0,
            user_id="ann-1",
            traits={"email_sha256": email, "email_enc": "gAAAAA-secret-token"},
        ),
        event("shop", "ann", "product_view", T0, user_id="ann-1", properties={"product_id": "p1"}),
        event("shop", "bob", "product_view", T0, properties={"product_id": "p3"}),
        event("shop", "bob", "identify", T0, traits={"phone_sha256": phone, "phone_enc": "gAAx"}),
    )
    await admin.send(
        event("shop", "ann", "product_view", T0, user_id="ann-1", properties={"product_id": "p2"})
    )

    r = await admin.http.get("/v1/sites/shop/audiences/product_viewers/export")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="shop-product_viewers.csv"'
    assert "gAA" not in r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["visitor_id", "entered_at", "products", "email_sha256", "phone_sha256"]
    got = {row["visitor_id"]: row for row in rows}
    assert set(got) == {"bob", "u:ann-1"}
    assert got["u:ann-1"]["products"] == "p1|p2"
    assert (got["u:ann-1"]["email_sha256"], got["u:ann-1"]["phone_sha256"]) == (email, "")
    assert (got["bob"]["products"], got["bob"]["phone_sha256"]) == ("p3", phone)
    assert got["bob"]["entered_at"] == format_ts(T0)

    r = await admin.http.get(
        "/v1/sites/shop/audiences/product_viewers/export", params={"format": "jsonl"}
    )
    assert r.headers["content-type"] == "application/x-ndjson"
    assert "gAA" not in r.text
    docs = {d["visitor_id"]: d for d in map(orjson.loads, r.text.splitlines())}
    assert docs["u:ann-1"] == {
        "visitor_id": "u:ann-1",
        "entered_at": format_ts(T0),
        "products": ["p1", "p2"],
        "email_sha256": email,
        "phone_sha256": None,
    }
    assert docs["bob"]["phone_sha256"] == phone
    r = await admin.http.get("/v1/sites/shop/audiences/nope/export")
    assert r.status_code == 404


async def test_export_reads_page_by_page(admin: Admin) -> None:
    await admin.put("shop", "viewers", VIEWERS)
    visitors = [f"w{i:02d}" for i in range(7)]
    await admin.send(*(event("shop", v, "page_view", T0) for v in visitors))
    queries = MemberQueries(admin.store)
    got = [row.member.person_id async for row in queries.export("shop", "viewers", page_size=2)]
    assert got == visitors


async def test_size_over_time_counts_changes_before_the_range(admin: Admin) -> None:
    await admin.put("shop", "recent", {"rule": {"did": {"event": "page_view", "within": "1h"}}})
    admin.clock.advance(600)  # T0+10m: two enter
    await admin.send(
        event("shop", "ann", "page_view", admin.clock.now()),
        event("shop", "bob", "page_view", admin.clock.now()),
    )
    admin.clock.advance(H + 600)  # T0+1h20m: both leave (window passed), cid enters
    await admin.engine.tick()
    await admin.send(event("shop", "cid", "page_view", admin.clock.now()))
    assert sorted(admin.reasons("recent")) == [
        ("ann", "enter", "qualifies"),
        ("ann", "exit", "no_longer_qualifies"),
        ("bob", "enter", "qualifies"),
        ("bob", "exit", "no_longer_qualifies"),
        ("cid", "enter", "qualifies"),
    ]
    url = "/v1/sites/shop/audiences/recent/size"

    async def series(**params: str) -> list[tuple[str, int, int, int]]:
        r = await admin.http.get(url, params=params)
        assert r.status_code == 200, r.text
        return [(b["start"], b["enters"], b["exits"], b["size"]) for b in r.json()["buckets"]]

    assert await series(**{"from": format_ts(T0), "to": format_ts(T0 + 3 * H)}) == [
        (format_ts(T0), 2, 0, 2),
        (format_ts(T0 + H), 1, 2, 1),
        (format_ts(T0 + 2 * H), 0, 0, 1),
    ]
    # Starting after the first enters: the first bucket still starts from 2 members.
    assert await series(**{"from": format_ts(T0 + H), "to": format_ts(T0 + 2 * H)}) == [
        (format_ts(T0 + H), 1, 2, 1)
    ]
    assert await series(
        **{"from": format_ts(T0 + H), "to": format_ts(T0 + 2 * H), "step": "30m"}
    ) == [(format_ts(T0 + H), 1, 2, 1), (format_ts(T0 + 1.5 * H), 0, 0, 1)]
    default = await series()  # 24 hourly buckets ending after now
    assert len(default) == 24
    assert default[-1][0] == format_ts(T0 + H)
    assert default[-1][3] == 1
    r = await admin.http.get(url, params={"step": "soon"})
    assert (r.status_code, r.json()["field"]) == (422, "step")
    r = await admin.http.get(url, params={"from": format_ts(T0), "to": format_ts(T0 - H)})
    assert r.status_code == 422


# -- erasure ---------------------------------------------------------------------------------


async def test_erasure_removes_events_and_memberships_and_publishes_exits(admin: Admin) -> None:
    await admin.put("shop", "viewers", VIEWERS)
    await admin.send(
        event("shop", "sam", "page_view", T0),
        event("shop", "sam", "identify", T0, user_id="sam-1", traits={"email_sha256": "ab"}),
        event("shop", "tim", "page_view", T0),
        event("shop", "uma", "page_view", T0),
    )
    before = await admin.count("SELECT count() FROM {db}.events WHERE visitor_id = 'sam'")
    assert before == 2

    r = await admin.http.delete("/v1/sites/shop/visitors/sam")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["persons"], sorted(body["visitors"]), body["exits"]) == (
        ["u:sam-1"],
        ["sam", "u:sam-1"],
        1,
    )
    assert await admin.count("SELECT count() FROM {db}.events WHERE visitor_id = 'sam'") == 0
    assert await admin.count("SELECT count() FROM {db}.contacts WHERE visitor_id = 'sam'") == 0
    assert ("u:sam-1", "exit", "erased") in admin.reasons("viewers")

    r = await admin.http.delete("/v1/sites/shop/users/tim-never-identified")
    assert (r.status_code, r.json()["exits"]) == (200, 0)
    r = await admin.http.delete("/v1/sites/shop/visitors/tim")
    assert r.json()["exits"] == 1
    members = (await admin.http.get("/v1/sites/shop/audiences/viewers/members")).json()
    assert [m["visitor_id"] for m in members["members"]] == ["uma"]
    assert (await admin.http.delete("/v1/sites/nowhere/visitors/x")).status_code == 404


# -- the CLI over real HTTP ------------------------------------------------------------------


async def test_cli_apply_list_members_export_and_errors(admin: Admin, tmp_path: Path) -> None:
    app = admin.http._transport.app  # type: ignore[attr-defined]
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # it failed to start: raise why
        return bool(server.started)

    await wait_for(started, True, what="the admin server to start", interval=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = ["--url", f"http://127.0.0.1:{port}", "--token", TOKEN]
    runner = CliRunner()

    async def cli(*args: str) -> tuple[int, str, str]:
        # In a thread: the server answers on this event loop meanwhile. The runner captures
        # this process's stdout, so the server's own log lines are dropped from it.
        result = await asyncio.to_thread(runner.invoke, cli_app, list(args), env={})
        out = "".join(
            line for line in result.stdout.splitlines(keepends=True) if not SERVER_LOG.match(line)
        )
        return result.exit_code, out, result.stderr

    try:
        spec = tmp_path / "audiences.yaml"
        spec.write_text(
            "audiences:\n"
            "  - {id: viewers, site: shop, name: Viewers, rule: {did: {event: page_view}}}\n"
            "  - id: engaged\n    site: shop\n    rule: {in_audience: viewers}\n"
        )
        code, out, err = await cli("audiences", "apply", "-f", str(spec), *base)
        assert code == 0, err
        assert out.splitlines() == [
            "created shop/viewers (version 1)",
            "created shop/engaged (version 1)",
        ]
        code, out, _ = await cli("audiences", "apply", "-f", str(spec), *base)
        assert out.splitlines()[0] == "unchanged shop/viewers (version 1)"

        await admin.engine.tick()
        await admin.send(*(event("shop", f"m{i}", "page_view", T0) for i in range(5)))

        code, out, _ = await cli("audiences", "members", "shop", "viewers", "--limit", "3", *base)
        assert code == 0
        assert [line.split("\t")[0] for line in out.splitlines()] == ["m0", "m1", "m2"]
        code, out, _ = await cli("audiences", "members", "shop", "viewers", *base)
        assert [line.split("\t")[0] for line in out.splitlines()] == [f"m{i}" for i in range(5)]
        assert out.splitlines()[0].split("\t")[1] == format_ts(T0)

        code, out, _ = await cli("audiences", "list", "--site", "shop", *base)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["SITE", "ID", "VERSION", "MEMBERS", "TTL", "LEVEL", "NAME"]
        assert lines[2].split() == ["shop", "viewers", "1", "5", "-", "person", "Viewers"]

        code, out, _ = await cli("audiences", "show", "shop", "viewers", *base)
        assert "version 1, 5 members" in out
        assert "page_view" in out

        target = tmp_path / "viewers.jsonl"
        code, _, err = await cli(
            "audiences", "export", "shop", "viewers", "--format", "jsonl", "-o", str(target), *base
        )
        assert code == 0, err
        assert len(target.read_text().splitlines()) == 5

        code, out, _ = await cli("audiences", "explain", "shop", "viewers", *base)
        assert out.startswith("-- rule\n")

        code, out, _ = await cli("audiences", "status", "--site", "shop", *base)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["SITE", "ID", "VERSION", "STATE", "PROGRESS", "EVENTS", "READ"]
        assert sorted(line.split()[:5] for line in lines[1:]) == [
            ["shop", "engaged", "1", "live", "100%"],
            ["shop", "viewers", "1", "live", "100%"],
        ]
        code, out, _ = await cli("audiences", "status", "--watch", *base)
        assert code == 0 and "shop/viewers v1 live" in out

        code, _, err = await cli("audiences", "delete", "shop", "viewers", *base)
        assert code == 1
        assert err.strip().startswith("error: in_use (HTTP 409): audience 'viewers' is used by")
        code, _, err = await cli("audiences", "show", "shop", "nope", *base)
        assert (code, err.count("\n")) == (1, 1)
        assert "not_found (HTTP 404)" in err

        bad = tmp_path / "bad.json"
        bad.write_text('{"id": "x", "site": "shop", "rule": {"idle": "soon"}}')
        code, _, err = await cli("audiences", "apply", "-f", str(bad), *base)
        assert code == 1
        assert "invalid_audience (HTTP 422) at rule.idle" in err

        code, out, _ = await cli("erase", "--site", "shop", "--visitor", "m0", *base)
        assert code == 0
        assert out.strip() == "erased on shop: 1 person(s), 1 visitor id(s), 2 audience exit(s)"
        code, _, err = await cli("audiences", "list", "--url", f"http://127.0.0.1:{port}",
                                 "--token", "wrong")  # fmt: skip
        assert code == 1
        assert "unauthorized (HTTP 401)" in err
    finally:
        server.should_exit = True
        await task

    code, _, err = await cli("audiences", "list", *base)  # the server is gone
    assert code == 1
    assert err.startswith("error: unreachable")
