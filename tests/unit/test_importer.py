"""``leadback events import`` without a broker: Segment messages and JSON API events become
canonical events with their own event time; what is refused is reported by line; what is
counted as imported was acknowledged."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from leadback import events as ev
from leadback.cli import app as cli_app
from leadback.clock import ManualClock
from leadback.errors import BrokerUnavailableError
from leadback.identity.contacts import ContactCipher
from leadback.importer import EventImporter, ImportPolicy, open_lines
from leadback.settings import load_settings

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
RECEIVED = "2027-01-15T08:00:00.000Z"
MONTH_AGO = "2026-12-16T08:00:00.000Z"
CIPHER = ContactCipher([ContactCipher.generate_key()])


class FakeProducer:
    """Acknowledges (or fails) every record; keeps what it acknowledged."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.records: list[tuple[str, bytes | None, dict[str, Any]]] = []
        self.fail_after = fail_after

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_after is not None and len(self.records) >= self.fail_after:
            future.set_exception(BrokerUnavailableError("delivery failed"))
        else:
            self.records.append((topic, key, orjson.loads(value)))
            future.set_result(None)
        return future


def importer(
    producer: FakeProducer | None = None, *, site: str | None = "demo", batch_size: int = 100
) -> EventImporter:
    settings = load_settings(
        sites={
            "demo": {"write_key": "k" * 16},
            "shop": {"write_key": "s" * 16, "consent_default": "denied"},
        },
        clickhouse={"events_ttl_days": 90},
    )
    return EventImporter(
        ImportPolicy.from_settings(settings, site),
        CIPHER,
        topic="events",
        producer=producer,
        batch_size=batch_size,
        clock=ManualClock(start=NOW),
    )


def canonical(line: dict[str, Any], **kw: Any) -> ev.CanonicalEvent:
    return importer(**kw).canonical(orjson.dumps(line), NOW)


def lines(*items: dict[str, Any] | str) -> Iterator[bytes]:
    for item in items:
        yield item.encode() if isinstance(item, str) else orjson.dumps(item)


def test_a_segment_track_call_keeps_its_time_and_maps_its_event_name() -> None:
    event = canonical(
        {
            "type": "track",
            "event": "Product Added",
            "messageId": "ajs-next-1700000000000-4f0b",
            "anonymousId": "507f191e810c19729de860ea",
            "userId": 97980,
            "timestamp": MONTH_AGO,
            "sentAt": "2026-12-16T08:00:01.000Z",
            "receivedAt": "2026-12-16T08:00:02.000Z",
            "properties": {"product_id": "sku-1", "price": 19.9},
            "context": {
                "ip": "203.0.113.7",
                "userAgent": "Mozilla/5.0",
                "locale": "de-DE",
                "page": {"url": "https://shop.example/p/1", "referrer": "https://g.example/"},
                "campaign": {"name": "winter", "source": "news"},
            },
            "integrations": {"All": True},
        }
    )
    assert (event["type"], event["name"]) == ("add_to_cart", "Product Added")
    assert event["event_id"] == "ajs-next-1700000000000-4f0b"
    assert (event["anonymous_id"], event["user_id"]) == ("507f191e810c19729de860ea", "97980")
    assert (event["occurred_at"], event["received_at"]) == (MONTH_AGO, RECEIVED)
    assert event["sent_at"] == "2026-12-16T08:00:01.000Z"
    assert (event["url"], event["referrer"]) == ("https://shop.example/p/1", "https://g.example/")
    assert event["utm"] == {**ev.empty_utm(), "campaign": "winter", "source": "news"}
    assert event["context"] == {
        "user_agent": "Mozilla/5.0",
        "ip": "203.0.113.0",
        "language": "de-DE",
    }
    assert event["properties"] == {"product_id": "sku-1", "price": 19.9}
    assert event["consent"]["status"] == "granted"  # the site's default, as for the JSON API


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "track", "event": "Order Completed"}, ("purchase", "Order Completed")),
        ({"type": "track", "event": "Checkout Started"}, ("checkout", "Checkout Started")),
        ({"type": "track", "event": "Product Viewed"}, ("product_view", "Product Viewed")),
        ({"type": "track", "event": "Video Played"}, ("custom", "Video Played")),
        ({"type": "page", "name": "Home"}, ("page_view", "Home")),
        ({"type": "screen", "name": "Cart"}, ("page_view", "Cart")),
        ({"type": "group", "groupId": "g1"}, ("custom", "group")),
    ],
)
def test_segment_types(message: dict[str, Any], expected: tuple[str, str]) -> None:
    event = canonical({**message, "anonymousId": "a1", "timestamp": MONTH_AGO})
    assert (event["type"], event["name"]) == expected


def test_segment_identify_and_alias() -> None:
    identify = canonical(
        {
            "type": "identify",
            "userId": "u1",
            "anonymousId": "a1",
            "traits": {"email": "Ann@X.example", "plan": "pro"},
            "timestamp": MONTH_AGO,
        }
    )
    assert identify["type"] == "identify"
    assert identify["traits"]["plan"] == "pro"
    assert "email" not in identify["traits"] and "email_sha256" in identify["traits"]
    alias = canonical({"type": "alias", "userId": "u2", "previousId": "u1", "timestamp": MONTH_AGO})
    assert (alias["type"], alias["properties"]) == ("alias", {"previous_id": "u1"})


def test_without_timestamp_segment_times_are_corrected_like_segment_does() -> None:
    event = canonical(
        {
            "type": "page",
            "anonymousId": "a1",
            "originalTimestamp": "2026-12-16T09:00:00Z",  # the phone was an hour fast
            "sentAt": "2026-12-16T09:00:10Z",
            "receivedAt": "2026-12-16T08:00:10Z",
        }
    )
    assert event["occurred_at"] == MONTH_AGO


def test_a_json_api_event_with_its_site() -> None:
    line = {
        "site_id": "shop",
        "type": "purchase",
        "anonymous_id": "a1",
        "timestamp": MONTH_AGO,
        "sent_at": "2026-12-16T08:00:05Z",  # kept as said; an import does not correct by it
        "properties": {"value": 10},
    }
    event = canonical(line, site=None)
    assert (event["site_id"], event["occurred_at"], event["received_at"]) == (
        "shop",
        MONTH_AGO,
        RECEIVED,
    )
    assert event["consent"]["tracking"] is False  # shop's own default: denied
    assert event["event_id"].startswith("imp-")
    assert canonical(line, site=None)["event_id"] == event["event_id"]  # the same line, same id


async def test_rejections_are_reported_by_line_and_the_rest_imported() -> None:
    producer = FakeProducer()
    imp = importer(producer, batch_size=2)
    report = await imp.run(
        lines(
            {"type": "page_view", "anonymous_id": "a1", "timestamp": MONTH_AGO},
            "",
            "{not json",
            {"type": "page_view", "anonymous_id": "a1"},
            {"site_id": "nope", "type": "page_view", "anonymous_id": "a1", "timestamp": MONTH_AGO},
            {"type": "page", "anonymousId": "a2", "timestamp": "2026-01-01T00:00:00Z"},
            {"type": "bogus", "anonymous_id": "a1", "timestamp": MONTH_AGO},
            {"type": "track", "anonymousId": "a3", "event": "Signed Up", "timestamp": MONTH_AGO},
            {"type": "page_view", "anonymous_id": "a4", "timestamp": "1969-12-31T23:59:59Z"},
        )
    )
    assert (report.lines, report.imported, report.rejected) == (9, 2, 6)
    assert [(r.line, r.reason, r.field) for r in report.rejections] == [
        (3, "invalid_json", None),
        (4, "missing_timestamp", "timestamp"),
        (5, "unknown_site", "site_id"),
        (6, "older_than_ttl", "timestamp"),
        (7, "invalid_event", "type"),
        (9, "invalid_timestamp", "timestamp"),
    ]
    assert [(t, k, e["type"]) for t, k, e in producer.records] == [
        ("events", b"demo:a1", "page_view"),
        ("events", b"demo:a3", "signup"),
    ]


async def test_only_acknowledged_events_count_as_imported() -> None:
    imp = importer(FakeProducer(fail_after=3), batch_size=2)
    events = (
        {"type": "page_view", "anonymous_id": f"a{i}", "timestamp": MONTH_AGO} for i in range(6)
    )
    with pytest.raises(BrokerUnavailableError):
        await imp.run(lines(*events))
    assert imp.report.imported == 2  # the first batch; the second failed on its second record


def test_open_lines_reads_gzip_and_plain_files(tmp_path: Path) -> None:
    data = b'{"a": 1}\n{"a": 2}\n'
    (tmp_path / "plain.jsonl").write_bytes(data)
    (tmp_path / "packed.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "packed.bin").write_bytes(gzip.compress(data))  # by content, not by name
    for name in ("plain.jsonl", "packed.jsonl.gz", "packed.bin"):
        assert list(open_lines(str(tmp_path / name))) == [b'{"a": 1}\n', b'{"a": 2}\n']


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("leadback.cli.common.configure_logging", lambda *_, **__: None)
    monkeypatch.setenv("LEADBACK_DATA_DIR", str(tmp_path / "data"))


@pytest.mark.usefixtures("quiet")
def test_the_command_summarises_and_exits_1_on_a_rejected_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"type": "page", "anonymousId": "a1", "timestamp": "2026-12-16T08:00:00Z"}\n'
        '{"type": "page", "anonymousId": "a1"}\n'
    )
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["events", "import", str(path), "--dry-run", "--site", "demo"], env={}
    )
    assert result.exit_code == 1, result.output
    assert "1 valid, 1 rejected (2 lines)" in result.stderr
    assert "line 2: missing_timestamp at timestamp" in result.stderr
    result = runner.invoke(
        cli_app,
        ["events", "import", str(path), "--dry-run", "--site", "demo", "--skip-invalid"],
        env={},
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli_app, ["events", "import", str(tmp_path / "none.jsonl")], env={})
    assert result.exit_code == 1
    assert "error:" in result.stderr
