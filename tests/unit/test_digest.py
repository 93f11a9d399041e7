"""Batch digests: event types and identity lines found in a JSONEachRow body by bulk scans."""

from __future__ import annotations

import orjson
import pytest

from leadback.audiences import digest as digest_module
from leadback.audiences.digest import BatchDigest, digest, identity_lines, merge


@pytest.fixture(params=["memmem", "bytes.find"], autouse=True)
def finder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the C library's memmem and with the pure-Python fallback."""
    if request.param == "bytes.find":
        monkeypatch.setattr(digest_module, "_MEMMEM", None)
    else:
        assert digest_module._MEMMEM is not None  # glibc on the test machines
    return str(request.param)


def line(event_id: str, etype: str, **extra: object) -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "site_id": "s", "visitor_id": "v", "type": etype, **extra}
    )


BODY = b"\n".join(
    [
        line("e1", "purchase", user_id=None, properties={"items": [{"type": "gift"}]}),
        line("e2", "page_view", user_id="u1"),
        line("e3", "identify", user_id=None, traits={"email_sha256": "ab"}),
        line("e4", "identify", user_id="u2"),
        line("e5", "page_view", user_id=None),
    ]
)


def test_types_found_are_those_asked_for_that_the_body_holds() -> None:
    d = digest(BODY, ["purchase", "add_to_cart", "lead"])
    assert d.probed == {"purchase", "add_to_cart", "lead"}
    assert d.types == {"purchase"}
    assert d.may_hold(["lead", "purchase"])
    assert not d.may_hold(["lead", "add_to_cart"])


def test_a_type_not_looked_for_counts_as_there() -> None:
    d = digest(BODY, ["purchase"])
    assert d.may_hold(["signup"])  # never probed: it might be there
    assert digest(BODY, None).may_hold(["anything"])


def test_a_nested_type_may_say_yes_never_no() -> None:
    # "type":"gift" inside properties: a false yes costs an evaluation, nothing else.
    assert digest(BODY, ["gift"]).may_hold(["gift"])
    assert not digest(BODY, ["signup"]).may_hold(["signup"])


def test_identity_lines_are_the_events_with_a_user_or_an_identify_each_once() -> None:
    lines = identity_lines(BODY)
    assert [orjson.loads(x)["event_id"] for x in lines] == ["e2", "e3", "e4"]
    assert identity_lines(line("e9", "page_view", user_id="u9")) == (
        line("e9", "page_view", user_id="u9"),
    )
    assert identity_lines(b"") == ()


def test_merged_digests_hold_every_type_of_those_all_looked_for() -> None:
    a = digest(line("a", "purchase"), ["purchase", "lead"])
    b = digest(line("b", "lead", user_id="u"), ["lead"])
    m = merge([a, b])
    assert m.probed == {"lead"}
    assert m.types == {"purchase", "lead"}
    assert m.may_hold(["purchase"])  # not looked for in b: counts as there
    assert len(m.identity) == 1
    assert merge([a, digest(b"", None)]).probed is None
    assert merge([]) == BatchDigest(None, frozenset(), ())


def test_markers_at_the_edges_of_the_body() -> None:
    first = line("a", "identify")
    last = line("z", "page_view", user_id="u")
    body = first + b"\n" + line("m", "page_view") + b"\n" + last
    assert identity_lines(body) == (first, last)
    assert identity_lines(b'{"type":"identify"}') == (b'{"type":"identify"}',)
    assert digest(body, ["page_view", "lead"]).types == {"page_view"}
