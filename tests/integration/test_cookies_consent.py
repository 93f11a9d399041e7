"""Visitor cookie and consent behaviour of the pixel, over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from leadback.settings import Settings
from tests.conftest import run_ingest
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


async def test_cookie_set_refreshed_and_withheld_by_consent(topics: Settings) -> None:
    async with (
        run_ingest(topics) as ingest,
        httpx.AsyncClient(base_url=ingest.url, timeout=10) as client,
    ):
        headers = {"user-agent": UA}
        first = await client.get("/p.gif?site=demo&eid=c1", headers=headers)
        set_cookie = first.headers["set-cookie"]
        vid = first.cookies["lb_vid"]
        assert len(vid) == 32
        assert "Max-Age=31536000" in set_cookie
        assert "HttpOnly" in set_cookie
        # Plain HTTP: SameSite=None would be dropped by browsers without Secure.
        assert "SameSite=Lax" in set_cookie
        again = await client.get(
            "/p.gif?site=demo&eid=c2", headers={**headers, "cookie": f"lb_vid={vid}"}
        )
        assert again.cookies["lb_vid"] == vid  # refreshed, same id
        https = await client.get(
            "/p.gif?site=demo&eid=c3",
            headers={**headers, "cookie": f"lb_vid={vid}", "x-forwarded-proto": "https"},
        )
        assert "Secure" in https.headers["set-cookie"]
        assert "SameSite=None" in https.headers["set-cookie"]
        junk = await client.get(
            "/p.gif?site=demo&eid=c4", headers={**headers, "cookie": "lb_vid=../../etc"}
        )
        assert junk.cookies["lb_vid"] != "../../etc"
        refused = {
            "c5": {"sec-gpc": "1"},
            "c6": {"dnt": "1"},
        }
        for eid, extra in refused.items():
            r = await client.get(
                f"/p.gif?site=demo&eid={eid}",
                headers={**headers, **extra, "cookie": f"lb_vid={vid}"},
            )
            assert r.status_code == 200
            assert "set-cookie" not in r.headers
        r = await client.get(
            "/p.gif?site=demo&eid=c7&consent=denied",
            headers={**headers, "cookie": f"lb_vid={vid}"},
        )
        assert "set-cookie" not in r.headers
        r = await client.get("/p.gif?site=shop&eid=c8", headers=headers)  # opt-in site
        assert "set-cookie" not in r.headers
        r = await client.get("/p.gif?site=shop&eid=c9&consent=granted", headers=headers)
        assert "set-cookie" in r.headers
    # Ingest has stopped, and stopping flushed its producer: every event is on the topic.
    got = {
        e["event_id"]: e
        for e in await read_topic(topics.kafka.bootstrap, topics.kafka.topic_events)
    }
    assert got["c2"]["anonymous_id"] == vid
    assert got["c2"]["visitor_id"] == vid
    for eid in ("c5", "c6", "c7", "c8"):
        assert got[eid]["anonymous_id"] is None, eid
        assert got[eid]["consent"]["tracking"] is False
        assert got[eid]["visitor_id"] == f"e:{eid}"
    assert got["c5"]["consent"]["gpc"] is True
    assert got["c6"]["consent"]["dnt"] is True
    assert got["c7"]["consent"]["status"] == "denied"
    assert got["c8"]["consent"]["status"] == "denied"
    assert got["c9"]["consent"]["tracking"] is True
