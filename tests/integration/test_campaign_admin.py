"""The campaign routes of the admin API and ``leadback campaigns`` against the real ClickHouse
engine.

Destination kinds are test doubles registered through the channel registry (the real channel
modules are not needed to store and validate definitions): ``fake`` with a secret reference,
and an ``email`` stand-in so that e-mail-only rules (an HTML part) apply. The registry is
restored after each test. Deliveries and steps are written as the dispatcher writes them
(``Ledger.record``, ``StepStore.write``) and read back through the API.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import pytest
import uvicorn
import yaml
from pydantic import ConfigDict
from typer.testing import CliRunner

from leadback.admin.app import create_admin_app
from leadback.admin.campaign_schemas import DeliveryCounts
from leadback.asgi_server import EmbeddedServer
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.repository import AudienceRepository
from leadback.campaigns.document import parse_document
from leadback.campaigns.repository import CampaignRepository
from leadback.cli import app as cli_app
from leadback.clock import ManualClock
from leadback.destinations import registry
from leadback.destinations.base import Channel
from leadback.destinations.config import ChannelDeps, DestinationConfig, SecretRef
from leadback.dispatcher.ledger import DeliveryRow, Ledger
from leadback.dispatcher.statuses import DELIVERY_STATUSES
from leadback.dispatcher.steps import StepRow, StepStore
from leadback.events import format_ts
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import RecordingPublisher
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests-0123456789"
T0 = 1_800_000_000.0
SECRET_ENV = "LEADBACK_TEST_CAMPAIGN_SECRET"
SECRET_VALUE = "whsec_c2VjcmV0LXZhbHVlLW5ldmVyLXRvLWJlLWFuc3dlcmVk"
SERVER_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# -- destination kinds for the tests ---------------------------------------------------------


class FakeConfig(DestinationConfig):
    kind: Literal["fake"]
    token: SecretRef


class FakeEmailConfig(DestinationConfig):
    kind: Literal["email"]
    from_address: str
    password: SecretRef | None = None


def never_built(config: Any, deps: ChannelDeps) -> Channel:
    raise AssertionError("no channel is built by the admin API")


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fake`` and an ``email`` stand-in, for this test only."""
    monkeypatch.setattr(registry, "_extra", dict(registry._extra))
    registry.register("fake", FakeConfig, never_built)
    registry.register("email", FakeEmailConfig, never_built)


AUDIENCES = {
    "audiences": [
        {"site": "demo", "id": "cart_abandoners", "rule": {"did": {"event": "add_to_cart"}}},
        {"site": "shop", "id": "viewers", "rule": {"did": {"event": "page_view"}}},
    ]
}
DOCUMENT: dict[str, Any] = {
    "destinations": [
        {
            "id": "mail",
            "kind": "email",
            "from_address": "shop@example.com",
            "password": {"env": SECRET_ENV},
        },
        {"id": "hook", "kind": "fake", "token": {"env": SECRET_ENV}},
    ],
    "policies": [
        {
            "site": "demo",
            "timezone": "Europe/Berlin",
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "channel_caps": {"email": {"max": 3, "per": "7d"}, "sms": {"max": 1, "per": "1d"}},
        }
    ],
    "campaigns": [
        {
            "id": "cart-recovery",
            "site": "demo",
            "name": "Cart recovery",
            "audience": "cart_abandoners",
            "holdout": 10,
            "steps": [
                {
                    "wait": "1h",
                    "destination": "mail",
                    "subject": "{{ traits.first_name | default('Hi') }}, your cart",
                    "text": "{{ products | join(', ') }}\n{{ unsubscribe_url }}",
                    "html": "<p>{{ products | join(', ') }}</p>",
                },
                {"wait": "24h", "destination": "hook", "data": {"person": "{{ person.id }}"}},
            ],
        }
    ],
}


def document(**changes: Any) -> dict[str, Any]:
    """``DOCUMENT`` with ``path=value`` changes: ``campaigns__0__holdout=5``."""
    doc = copy.deepcopy(DOCUMENT)
    for path, value in changes.items():
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("__")]
        node: Any = doc
        for p in parents:
            node = node[p]
        node[last] = value
    return doc


class Admin:
    def __init__(self, settings: Settings, store: ClickHouseStore, http: httpx.AsyncClient):
        self.settings = settings
        self.store = store
        self.http = http

    async def apply(self, doc: Any) -> httpx.Response:
        return await self.http.post("/v1/campaigns:apply", json=doc)


@pytest.fixture
async def admin(
    store: ClickHouseStore, make_settings: Callable[..., Settings], kinds: None
) -> AsyncIterator[Admin]:
    settings = make_settings(admin={"port": 0, "tokens": [TOKEN]})
    await migrate(store)
    clock = ManualClock(T0)
    engine = AudienceEngine(
        store, RecordingPublisher(), clock=clock, repository=AudienceRepository(store, clock=clock)
    )
    await engine.start()
    app = create_admin_app(settings, engine, store, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://admin.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        r = await client.post("/v1/audiences:apply", json=AUDIENCES)
        assert r.status_code == 200, r.text
        yield Admin(settings, store, client)


def items(r: httpx.Response) -> list[tuple[str, str, int, str]]:
    assert r.status_code == 200, r.text
    return [(i["kind"], i["key"], i["version"], i["status"]) for i in r.json()["items"]]


# -- definitions -----------------------------------------------------------------------------


async def test_apply_list_get_delete(admin: Admin) -> None:
    r = await admin.apply(DOCUMENT)
    assert r.json()["changed"] is True
    assert items(r) == [
        ("destination", "mail", 1, "created"),
        ("destination", "hook", 1, "created"),
        ("policy", "demo", 1, "created"),
        ("campaign", "demo/cart-recovery", 1, "created"),
    ]
    r = await admin.apply(DOCUMENT)
    assert r.json()["changed"] is False
    assert [i[2:] for i in items(r)] == [(1, "unchanged")] * 4

    r = await admin.apply(document(campaigns__0__holdout=5))
    assert items(r)[2:] == [
        ("policy", "demo", 1, "unchanged"),
        ("campaign", "demo/cart-recovery", 2, "updated"),
    ]

    r = await admin.http.get("/v1/campaigns")
    assert r.status_code == 200
    assert r.json() == {
        "campaigns": [
            {
                "site": "demo",
                "id": "cart-recovery",
                "name": "Cart recovery",
                "audience": "cart_abandoners",
                "enabled": True,
                "holdout": 5.0,
                "version": 2,
                "steps": [
                    {"step": 0, "wait": "1h", "destination": "mail", "channel": "email"},
                    {"step": 1, "wait": "1d", "destination": "hook", "channel": "fake"},
                ],
                "deliveries": dict.fromkeys(DELIVERY_STATUSES, 0),
            }
        ]
    }
    assert (await admin.http.get("/v1/campaigns?site=shop")).json() == {"campaigns": []}
    r = await admin.http.get("/v1/campaigns?site=nowhere")
    assert (r.status_code, r.json()["error"]) == (404, "unknown_site")

    r = await admin.http.get("/v1/campaigns/demo/cart-recovery")
    assert r.status_code == 200
    detail = r.json()
    assert detail["version"] == 2
    assert detail["definition"]["steps"][1] == {
        "wait": "1d",
        "destination": "hook",
        "data": {"person": "{{ person.id }}"},
    }
    assert parse_document({"campaigns": [detail["definition"]]}).campaigns == (
        parse_document(document(campaigns__0__holdout=5)).campaigns
    )  # what is answered applies back to the same campaign
    r = await admin.http.get("/v1/campaigns/demo/nope")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await admin.http.get("/v1/campaigns/nowhere/cart-recovery")
    assert (r.status_code, r.json()["error"]) == (404, "unknown_site")

    r = await admin.http.delete("/v1/campaigns/demo/cart-recovery")
    assert (r.status_code, r.json()) == (200, {"site": "demo", "id": "cart-recovery", "version": 3})
    assert (await admin.http.get("/v1/campaigns")).json() == {"campaigns": []}
    assert (await admin.http.get("/v1/campaigns/demo/cart-recovery")).status_code == 404
    r = await admin.http.delete("/v1/campaigns/demo/cart-recovery")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")

    # Applied again after the delete: created anew, its version after the deleted one's.
    r = await admin.apply(DOCUMENT)
    assert items(r)[3] == ("campaign", "demo/cart-recovery", 4, "created")


def _without(doc: dict[str, Any], section: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != section}


@pytest.mark.parametrize(
    ("doc", "status", "error", "field"),
    [
        (
            document(campaigns__0__steps__1__destination="nowhere"),
            422,
            "unknown_destination",
            "campaigns[0].steps[1].destination",
        ),
        (
            document(campaigns__0__audience="cart_leavers"),
            422,
            "unknown_audience",
            "campaigns[0].audience",
        ),
        (
            document(campaigns__0__audience="viewers"),  # an audience of another site
            422,
            "unknown_audience",
            "campaigns[0].audience",
        ),
        (
            document(campaigns__0__steps__0__html="<p>{{ products | join(', ') </p>"),
            422,
            "invalid_template",
            "campaigns[0].steps[0].html",
        ),
        (
            document(campaigns__0__steps__1__html="<p>hi</p>"),  # HTML on a non-e-mail step
            422,
            "invalid_campaign",
            "campaigns[0].steps[1].html",
        ),
        (
            document(campaigns__0__steps__0__subject=None),  # e-mail needs a subject
            422,
            "invalid_campaign",
            "campaigns[0].steps[0].subject",
        ),
        (
            document(destinations__1__token=SECRET_VALUE),  # a value where a reference belongs
            422,
            "invalid_destination",
            "destinations[1].token",
        ),
        (
            document(destinations__0__kind="carrier-pigeon"),
            422,
            "invalid_destination",
            "destinations[0].kind",
        ),
        (
            document(policies__0__timezone="Mars/Olympus"),
            422,
            "invalid_policy",
            "policies[0].timezone",
        ),
        (document(campaigns__0__site="nowhere"), 404, "unknown_site", "campaigns[0].site"),
        (
            _without(document(campaigns__0__steps__1__destination="hook"), "destinations"),
            422,
            "unknown_destination",  # neither in the document nor stored
            "campaigns[0].steps[0].destination",
        ),
        ({"campaign": []}, 422, "invalid_document", "campaign"),
    ],
    ids=[
        "unknown_destination",
        "unknown_audience",
        "audience_of_another_site",
        "bad_template",
        "html_on_webhook",
        "missing_subject",
        "plain_secret",
        "unknown_kind",
        "bad_timezone",
        "unknown_site",
        "destination_not_stored",
        "unknown_section",
    ],
)
async def test_validation_errors_name_the_field_and_nothing_is_written(
    admin: Admin, doc: dict[str, Any], status: int, error: str, field: str
) -> None:
    for route in ("/v1/campaigns:validate", "/v1/campaigns:apply"):
        r = await admin.http.post(route, json=doc)
        assert (r.status_code, r.json()["error"], r.json()["field"]) == (status, error, field)
        assert SECRET_VALUE not in r.text  # a pasted secret is not echoed back
    # The valid parts before the bad one were not written either.
    assert (await admin.http.get("/v1/destinations")).json() == {"destinations": []}
    assert await CampaignRepository(admin.store).policies() == {}
    assert (await admin.http.get("/v1/campaigns")).json() == {"campaigns": []}


async def test_validate_writes_nothing_and_uses_stored_destinations(admin: Admin) -> None:
    r = await admin.http.post("/v1/campaigns:validate", json=DOCUMENT)
    assert (r.status_code, r.json()) == (
        200,
        {"valid": True, "destinations": 2, "policies": 1, "campaigns": 1},
    )
    assert (await admin.http.get("/v1/destinations")).json() == {"destinations": []}
    assert items(await admin.apply(_without(DOCUMENT, "campaigns")))[0][3] == "created"
    campaigns_only = _without(DOCUMENT, "destinations")  # refers to stored destinations
    r = await admin.http.post("/v1/campaigns:validate", json=campaigns_only)
    assert r.json() == {"valid": True, "destinations": 0, "policies": 1, "campaigns": 1}
    assert (await admin.http.get("/v1/campaigns")).json() == {"campaigns": []}


async def test_destinations_answer_references_never_secret_values(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    answers = [await admin.apply(DOCUMENT)]
    stored = await CampaignRepository(admin.store).destinations()
    hook = stored["hook"]
    assert isinstance(hook, FakeConfig)
    assert hook.token.resolve() == SECRET_VALUE  # the secret is there to be found

    r = await admin.http.get("/v1/destinations")
    assert r.status_code == 200
    assert r.json() == {
        "destinations": [
            {
                "id": "hook",
                "kind": "fake",
                "definition": {
                    "id": "hook",
                    "kind": "fake",
                    "token": {"env": SECRET_ENV},
                    "concurrency": 4,
                    "timeout_s": 15.0,
                },
            },
            {
                "id": "mail",
                "kind": "email",
                "definition": {
                    "id": "mail",
                    "kind": "email",
                    "from_address": "shop@example.com",
                    "password": {"env": SECRET_ENV},
                    "concurrency": 4,
                    "timeout_s": 15.0,
                },
            },
        ]
    }
    answers.append(r)
    reads = (
        "/v1/campaigns",
        "/v1/campaigns/demo/cart-recovery",
        "/v1/deliveries",
        "/v1/deliveries/summary",
        "/openapi.json",
    )
    answers += [await admin.http.get(path) for path in reads]
    answers.append(await admin.http.post("/v1/campaigns:validate", json=DOCUMENT))
    for answer in answers:
        assert answer.status_code == 200, answer.request.url
        assert SECRET_VALUE not in answer.text, answer.request.url


# -- deliveries and steps --------------------------------------------------------------------


def delivery(n: str, status: str, at_s: float, **fields: Any) -> DeliveryRow:
    base: dict[str, Any] = {
        "delivery_id": f"d-{n}",
        "site_id": "demo",
        "campaign_id": "cart-recovery",
        "campaign_version": 1,
        "person_id": f"p-{n}",
        "audience_id": "cart_abandoners",
        "membership_version": 1,
        "step": 0,
        "channel": "email",
        "destination_id": "mail",
        "status": status,
        "at_ms": int((T0 + at_s) * 1000),
        "seq": int((T0 + at_s) * 1000),  # orders a delivery's rows
    }
    return DeliveryRow(**{**base, **fields})


LEDGER = [
    # d-a: sending, then sent
    delivery("a", "sending", 10, attempt=1),
    delivery("a", "sent", 11, attempt=1, http_status=250, provider_id="m-1"),
    # d-b: sending, retrying, sending, failed for good
    delivery("b", "sending", 20, attempt=1),
    delivery("b", "retrying", 21, attempt=1, reason="http_503", http_status=503),
    delivery("b", "sending", 30, attempt=2),
    delivery("b", "failed", 31, attempt=2, reason="smtp_550", http_status=550, response="no"),
    # d-c: held out; d-d: the same person as d-a, step 1 on the webhook, still retrying
    delivery("c", "held_out", 40),
    delivery(
        "d",
        "retrying",
        50,
        person_id="p-a",
        step=1,
        channel="fake",
        destination_id="hook",
        attempt=1,
        reason="timeout",
    ),
    # another campaign, another site
    delivery("e", "sent", 60, campaign_id="welcome", attempt=1),
    delivery("f", "sent", 70, site_id="shop", campaign_id="promo", audience_id="viewers"),
]


async def test_deliveries_filters_return_what_the_ledger_holds(admin: Admin) -> None:
    await admin.apply(DOCUMENT)
    await Ledger(admin.store).record(LEDGER)

    async def ids(**params: Any) -> list[tuple[str, str]]:
        r = await admin.http.get("/v1/deliveries", params=params)
        assert r.status_code == 200, r.text
        return [(d["delivery_id"], d["status"]) for d in r.json()["deliveries"]]

    newest_first = [
        ("d-f", "sent"),
        ("d-e", "sent"),
        ("d-d", "retrying"),
        ("d-c", "held_out"),
        ("d-b", "failed"),
        ("d-a", "sent"),
    ]
    assert await ids() == newest_first
    assert await ids(site="demo") == newest_first[1:]
    assert await ids(site="demo", campaign="cart-recovery") == newest_first[2:]
    assert await ids(person="p-a") == [("d-d", "retrying"), ("d-a", "sent")]
    assert await ids(status="sent") == [("d-f", "sent"), ("d-e", "sent"), ("d-a", "sent")]
    assert await ids(status="sending") == []  # d-a and d-b moved on: the latest state counts
    assert await ids(status="sent", site="demo", limit=1) == [("d-e", "sent")]

    r = await admin.http.get("/v1/deliveries", params={"campaign": "cart-recovery", "limit": 10})
    failed = next(d for d in r.json()["deliveries"] if d["delivery_id"] == "d-b")
    assert failed == {
        "delivery_id": "d-b",
        "site": "demo",
        "campaign": "cart-recovery",
        "person": "p-b",
        "membership_version": 1,
        "step": 0,
        "channel": "email",
        "destination": "mail",
        "status": "failed",
        "reason": "smtp_550",
        "attempts": 2,
        "http_status": 550,
        "response": "no",
        "provider_id": "",
        "first_at": format_ts(T0 + 20),
        "last_at": format_ts(T0 + 31),
    }

    for params in ({"status": "delivered"}, {"limit": 0}, {"limit": 1001}):
        r = await admin.http.get("/v1/deliveries", params=params)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), params
        assert r.json()["field"] == next(iter(params))
    r = await admin.http.get("/v1/deliveries", params={"site": "nowhere"})
    assert (r.status_code, r.json()["error"]) == (404, "unknown_site")

    def counts(**nonzero: int) -> dict[str, int]:
        return {**dict.fromkeys(DELIVERY_STATUSES, 0), **nonzero}

    r = await admin.http.get("/v1/deliveries/summary", params={"site": "demo"})
    assert r.json() == {
        "campaigns": [
            {
                "site": "demo",
                "campaign": "cart-recovery",
                "deliveries": counts(sent=1, failed=1, held_out=1, retrying=1),
                "total": 4,
            },
            {"site": "demo", "campaign": "welcome", "deliveries": counts(sent=1), "total": 1},
        ]
    }
    r = await admin.http.get("/v1/deliveries/summary")
    assert [(c["site"], c["campaign"]) for c in r.json()["campaigns"]] == [
        ("demo", "cart-recovery"),
        ("demo", "welcome"),
        ("shop", "promo"),
    ]
    [listed] = (await admin.http.get("/v1/campaigns")).json()["campaigns"]
    assert listed["deliveries"] == counts(sent=1, failed=1, held_out=1, retrying=1)
    detail = (await admin.http.get("/v1/campaigns/demo/cart-recovery")).json()
    assert detail["deliveries"] == listed["deliveries"]


async def test_person_steps_show_what_is_scheduled(admin: Admin) -> None:
    due = int(T0 * 1000) + 3_600_000
    enrolled = StepRow(
        site_id="demo",
        campaign_id="cart-recovery",
        person_id="u:ann",
        membership_version=3,
        step=0,
        audience_id="cart_abandoners",
        partition=1,
        due_at=due,
        products=("sku-1", "sku-2"),
        change_at=int(T0 * 1000),
    )
    steps = StepStore(admin.store)
    await steps.write(
        [
            enrolled,
            _row_for(enrolled, step=1),
            _row_for(enrolled, person_id="bob"),
        ]
    )
    await steps.write([enrolled.moved(int(T0 * 1000) + 1, state="done")])

    r = await admin.http.get("/v1/persons/demo/u:ann/steps")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "site": "demo",
        "person": "u:ann",
        "steps": [
            {
                "campaign": "cart-recovery",
                "audience": "cart_abandoners",
                "membership_version": 3,
                "step": step,
                "due_at": format_ts(due / 1000),
                "state": state,
                "reason": "",
                "attempt": 0,
                "products": ["sku-1", "sku-2"],
                "entered_at": format_ts(T0),
            }
            for step, state in ((0, "done"), (1, "pending"))
        ],
    }
    assert (await admin.http.get("/v1/persons/demo/nobody/steps")).json()["steps"] == []
    assert (await admin.http.get("/v1/persons/shop/u:ann/steps")).json()["steps"] == []
    r = await admin.http.get("/v1/persons/nowhere/u:ann/steps")
    assert (r.status_code, r.json()["error"]) == (404, "unknown_site")


def _fields(row: StepRow, **changes: Any) -> dict[str, Any]:
    return {**{f: getattr(row, f) for f in row.__slots__}, **changes}


def _row_for(row: StepRow, **changes: Any) -> StepRow:
    return StepRow(**_fields(row, **changes))


# -- OpenAPI and auth ------------------------------------------------------------------------


async def test_every_campaign_route_needs_the_token(admin: Admin) -> None:
    app = admin.http._transport.app  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test"
    ) as anonymous:
        for method, path in (
            ("POST", "/v1/campaigns:apply"),
            ("POST", "/v1/campaigns:validate"),
            ("GET", "/v1/campaigns"),
            ("GET", "/v1/campaigns/demo/x"),
            ("DELETE", "/v1/campaigns/demo/x"),
            ("GET", "/v1/destinations"),
            ("GET", "/v1/deliveries"),
            ("GET", "/v1/deliveries/summary"),
            ("GET", "/v1/persons/demo/p/steps"),
        ):
            r = await anonymous.request(method, path, json=DOCUMENT if method == "POST" else None)
            assert (r.status_code, r.json()["error"]) == (401, "unauthorized"), path
    assert (await admin.http.get("/v1/campaigns")).json() == {"campaigns": []}  # none written


async def test_every_campaign_route_documents_its_statuses(admin: Admin) -> None:
    spec = (await admin.http.get("/openapi.json")).json()
    assert "campaigns" in {t["name"] for t in spec["tags"]}
    routes = {
        ("post", "/v1/campaigns:apply"): {"200", "401", "404", "422", "503"},
        ("post", "/v1/campaigns:validate"): {"200", "401", "404", "422", "503"},
        ("get", "/v1/campaigns"): {"200", "401", "404", "422", "503"},
        ("get", "/v1/campaigns/{site}/{campaign_id}"): {"200", "401", "404", "422", "503"},
        ("delete", "/v1/campaigns/{site}/{campaign_id}"): {"200", "401", "404", "422", "503"},
        ("get", "/v1/destinations"): {"200", "401", "422", "503"},
        ("get", "/v1/deliveries"): {"200", "401", "404", "422", "503"},
        ("get", "/v1/deliveries/summary"): {"200", "401", "404", "422", "503"},
        ("get", "/v1/persons/{site}/{person}/steps"): {"200", "401", "404", "422", "503"},
    }
    for (method, path), statuses in routes.items():
        operation = spec["paths"][path][method]
        assert operation["tags"] == ["campaigns"], path
        assert statuses <= set(operation["responses"]), (path, set(operation["responses"]))
        assert operation["responses"]["200"]["description"] != "Successful Response", path
        for status, answer in operation["responses"].items():
            assert answer["description"], (path, status)
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            is_error = ref.endswith("/ErrorBody")
            assert is_error == (status != "200"), (path, status, ref)
    statuses = spec["paths"]["/v1/deliveries"]["get"]["parameters"]
    status_param = next(p for p in statuses if p["name"] == "status")
    assert list(status_param["schema"]["anyOf"][0]["enum"]) == list(DELIVERY_STATUSES)
    assert list(spec["components"]["schemas"]["DeliveryCounts"]["properties"]) == list(
        DELIVERY_STATUSES
    )
    assert list(DeliveryCounts.model_fields) == list(DELIVERY_STATUSES)


# -- the example file ------------------------------------------------------------------------


class LaxConfig(DestinationConfig):
    """Stands for a channel module not in this tree: any fields, secrets still references."""

    model_config = ConfigDict(extra="allow", frozen=True)


class LaxEmail(LaxConfig):
    kind: Literal["email"]


class LaxWebhook(LaxConfig):
    kind: Literal["webhook"]


@pytest.fixture
def example_kinds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The real e-mail and webhook configs if their modules are here, lax stand-ins if not;
    returns the kinds stood in for."""
    monkeypatch.setattr(registry, "_extra", {})
    stood_in = []
    for kind, lax in (("email", LaxEmail), ("webhook", LaxWebhook)):
        try:
            registry._resolve(kind)
        except ImportError:
            registry.register(kind, lax, never_built)
            stood_in.append(kind)
    return stood_in


async def test_examples_validate_on_the_demo_site(
    store: ClickHouseStore, make_settings: Callable[..., Settings], example_kinds: list[str]
) -> None:
    settings = make_settings()
    await migrate(store)
    audiences = yaml.safe_load((EXAMPLES / "audiences.yaml").read_text())
    from leadback.audiences.validation import parse_audience_set

    await AudienceRepository(store).apply(parse_audience_set(audiences), sites=settings.sites)
    doc = parse_document(yaml.safe_load((EXAMPLES / "campaigns.yaml").read_text()))
    applied = await CampaignRepository(store).apply(doc, sites=settings.sites)
    assert [(kind, key, status) for kind, key, _, status in applied.items] == [
        ("destination", "dev-mail", "created"),
        ("destination", "demo-hook", "created"),
        ("policy", "demo", "created"),
        ("campaign", "demo/cart-recovery", "created"),
    ]
    [campaign] = doc.campaigns
    assert (campaign.audience, campaign.holdout, [s.wait for s in campaign.steps]) == (
        "cart_abandoners",
        10,
        [3_600_000, 86_400_000],
    )
    assert "{{ unsubscribe_url }}" in (campaign.steps[0].html or "")
    assert "{{ unsubscribe_url }}" in (campaign.steps[0].text or "")
    hook = doc.destinations[1].model_dump(mode="json", exclude_none=True)
    assert hook["secret"] == {"env": "LEADBACK_DEMO_WEBHOOK_SECRET"}


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # In process, the CLI would point structlog at the runner's captured (then closed) stderr
    # for the rest of the session.
    monkeypatch.setattr("leadback.cli.common.configure_logging", lambda *_, **__: None)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    # In a thread: a server on this event loop answers meanwhile. The runner captures this
    # process's stdout, so the server's own log lines are dropped from it.
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, list(args), env=env or {})
    out = "".join(
        line for line in result.stdout.splitlines(keepends=True) if not SERVER_LOG.match(line)
    )
    return result.exit_code, out, result.stderr


@pytest.fixture
async def served(admin: Admin) -> AsyncIterator[list[str]]:
    """The admin app on a real server; the CLI's --url/--token arguments."""
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
    try:
        yield ["--url", f"http://127.0.0.1:{port}", "--token", TOKEN]
    finally:
        server.should_exit = True
        await task


async def test_cli_through_the_api(
    admin: Admin, served: list[str], tmp_path: Path, quiet_cli: None
) -> None:
    spec = tmp_path / "campaigns.yaml"
    spec.write_text(yaml.safe_dump(DOCUMENT))
    code, out, err = await run_cli("campaigns", "validate", "-f", str(spec), *served)
    assert (code, out, err) == (0, "valid: 2 destination(s), 1 policy(ies), 1 campaign(s)\n", "")
    assert (await admin.http.get("/v1/campaigns")).json() == {"campaigns": []}

    code, out, err = await run_cli("campaigns", "apply", "-f", str(spec), *served)
    assert code == 0, err
    assert out.splitlines() == [
        "created destination mail (version 1)",
        "created destination hook (version 1)",
        "created policy demo (version 1)",
        "created campaign demo/cart-recovery (version 1)",
    ]
    code, out, _ = await run_cli("campaigns", "apply", "-f", str(spec), *served)
    assert out.splitlines()[-1] == "unchanged campaign demo/cart-recovery (version 1)"

    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps(document(campaigns__0__steps__1__destination="nowhere")))
    for command in ("validate", "apply"):
        code, out, err = await run_cli("campaigns", command, "-f", str(bad), *served)
        assert (code, out) == (1, "")
        assert err == (
            "error: unknown_destination (HTTP 422) at campaigns[0].steps[1].destination: "
            "no destination 'nowhere'\n"
        )

    await Ledger(admin.store).record(LEDGER)
    code, out, _ = await run_cli("campaigns", "list", *served)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "SITE", "ID", "VERSION", "AUDIENCE", "STEPS", "HOLDOUT", "ENABLED", "SENT", "NAME"
    ]  # fmt: skip
    assert row.split() == [
        "demo", "cart-recovery", "1", "cart_abandoners", "email(1h),fake(1d)", "10%", "yes", "1",
        "Cart", "recovery",
    ]  # fmt: skip

    code, out, _ = await run_cli("campaigns", "status", "--site", "demo", *served)
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines == [
        ["CAMPAIGN", *(s.upper() for s in DELIVERY_STATUSES)],
        ["demo/cart-recovery", "0", "1", "1", "1", "1", "0", "0", "0", "0", "0"],
        ["demo/welcome", "0", "1", "0", "0", "0", "0", "0", "0", "0", "0"],  # no campaign now
    ]

    code, out, _ = await run_cli(
        "campaigns", "deliveries", "--campaign", "cart-recovery", "--status", "failed", *served
    )
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "LAST_AT", "STATUS", "CAMPAIGN", "STEP", "CHANNEL", "PERSON", "ATTEMPTS", "REASON"
    ]  # fmt: skip
    assert row.split() == [
        format_ts(T0 + 31), "failed", "demo/cart-recovery", "0", "email", "p-b", "2", "smtp_550"
    ]  # fmt: skip
    code, out, _ = await run_cli("campaigns", "deliveries", "--person", "p-a", *served)
    assert [line.split()[5] for line in out.splitlines()[1:]] == ["p-a", "p-a"]
    code, _, err = await run_cli("campaigns", "deliveries", "--status", "gone", *served)
    assert code == 1
    assert err.startswith("error: invalid_request (HTTP 422) at status:")

    code, out, _ = await run_cli("campaigns", "show", "demo", "cart-recovery", *served)
    assert out.startswith("# demo/cart-recovery: version 1\n")
    assert yaml.safe_load(out)["steps"][1]["destination"] == "hook"
    code, out, _ = await run_cli("campaigns", "delete", "demo", "cart-recovery", *served)
    assert (code, out) == (0, "deleted demo/cart-recovery (version 2)\n")
    code, _, err = await run_cli("campaigns", "delete", "demo", "cart-recovery", *served)
    assert (code, err.count("\n")) == (1, 1)
    assert "not_found (HTTP 404)" in err


async def test_cli_offline_writes_what_the_api_writes(
    admin: Admin, tmp_path: Path, quiet_cli: None
) -> None:
    offline_db = f"{admin.store.database}_offline"
    offline = ClickHouseStore(admin.settings.clickhouse.model_copy(update={"database": offline_db}))
    env = {
        "LEADBACK_DATA_DIR": str(tmp_path / "cli"),
        "LEADBACK_CLICKHOUSE_URL": admin.settings.clickhouse.url,
        "LEADBACK_CLICKHOUSE_DATABASE": offline_db,
    }  # the default sites: `demo` only

    async def apply_offline(doc: Any, command: str = "campaigns") -> tuple[int, str, str]:
        path = tmp_path / "doc.json"
        path.write_bytes(orjson.dumps(doc))
        return await run_cli(command, "apply", "--offline", "-f", str(path), env=env)

    try:
        # Campaigns refer to stored audiences: with none stored, nothing is written.
        code, out, err = await apply_offline(DOCUMENT)
        assert (code, out) == (1, "")
        assert err.startswith("error: unknown_audience at campaigns[0].audience: no audience")
        await migrate(offline)
        assert await CampaignRepository(offline).destinations() == {}

        code, _, err = await apply_offline(AUDIENCES["audiences"][:1], command="audiences")
        assert code == 0, err
        code, out, err = await apply_offline(DOCUMENT)
        assert code == 0, err
        assert out.splitlines() == [
            "created destination mail (version 1)",
            "created destination hook (version 1)",
            "created policy demo (version 1)",
            "created campaign demo/cart-recovery (version 1)",
        ]
        code, out, _ = await apply_offline(DOCUMENT)
        assert out.splitlines()[-1] == "unchanged campaign demo/cart-recovery (version 1)"
        code, _, err = await apply_offline(document(campaigns__0__steps__0__html="{% if %}"))
        assert (code, err.splitlines()[0].rsplit(":", 1)[0]) == (
            1,
            "error: invalid_template at campaigns[0].steps[0].html",
        )

        # The same document through the API: the same definitions stored.
        assert items(await admin.apply(DOCUMENT))[0][3] == "created"
        online_repo, offline_repo = CampaignRepository(admin.store), CampaignRepository(offline)
        assert await offline_repo.campaigns() == await online_repo.campaigns()
        assert await offline_repo.destinations() == await online_repo.destinations()
        assert await offline_repo.policies() == await online_repo.policies()
    finally:
        await offline.command(f"DROP DATABASE IF EXISTS {offline_db}")
        await offline.close()
