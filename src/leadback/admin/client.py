"""A small synchronous client of the admin API, for the ``leadback audiences`` and
``leadback campaigns`` commands.

Every call has a timeout; failures become :class:`AdminAPIError` with the API's ``error``
reason and ``detail`` (or ``unreachable`` when no answer came), so the CLI prints one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from leadback.errors import LeadbackError

DEFAULT_TIMEOUT_S = 30.0


class AdminAPIError(LeadbackError):
    """The admin API refused a request or could not be reached."""

    def __init__(
        self, reason: str, detail: str = "", *, status: int = 0, field: str | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.status = status
        self.field = field
        text = f"{reason} (HTTP {status})" if status else reason
        if field:
            text += f" at {field}"
        super().__init__(f"{text}: {detail}" if detail else text)


def _seg(value: str) -> str:
    return quote(value, safe="")


class AdminClient:
    """Calls the admin API at ``base_url`` with a bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminAPIError("unreachable", f"{self._client.base_url}: {exc}") from exc
        _raise_for(response)
        return response.json()

    # -- audiences ------------------------------------------------------------------------

    def apply(self, document: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("POST", "/v1/audiences:apply", json=document)[
            "audiences"
        ]
        return result

    def validate(self, document: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/audiences:validate", json=document)
        return result

    def audience_statuses(self, site: str | None = None) -> list[dict[str, Any]]:
        params = {"site": site} if site else {}
        result: list[dict[str, Any]] = self._call("GET", "/v1/audiences:status", params=params)[
            "audiences"
        ]
        return result

    def list_audiences(self, site: str | None = None) -> list[dict[str, Any]]:
        params = {"site": site} if site else {}
        result: list[dict[str, Any]] = self._call("GET", "/v1/audiences", params=params)[
            "audiences"
        ]
        return result

    def show(self, site: str, audience_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", self._audience(site, audience_id))
        return result

    def delete(self, site: str, audience_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", self._audience(site, audience_id))
        return result

    def explain(self, site: str, audience_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", self._audience(site, audience_id) + "/explain")
        return result

    def size(self, site: str, audience_id: str, **params: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "GET", self._audience(site, audience_id) + "/size", params=params
        )
        return result

    def members(
        self, site: str, audience_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        result: dict[str, Any] = self._call(
            "GET", self._audience(site, audience_id) + "/members", params=params
        )
        return result

    def iter_members(
        self, site: str, audience_id: str, *, page_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Every member, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.members(site, audience_id, limit=page_size, cursor=cursor)
            yield from page["members"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def export(self, site: str, audience_id: str, *, fmt: str = "csv") -> Iterator[bytes]:
        """The export body, as it streams in."""
        path = self._audience(site, audience_id) + "/export"
        try:
            with self._client.stream("GET", path, params={"format": fmt}) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                yield from response.iter_bytes()
        except httpx.HTTPError as exc:
            raise AdminAPIError("unreachable", f"{self._client.base_url}: {exc}") from exc

    # -- erasure --------------------------------------------------------------------------

    def erase(
        self, site: str, *, visitor_id: str | None = None, user_id: str | None = None
    ) -> dict[str, Any]:
        if (visitor_id is None) == (user_id is None):
            raise ValueError("give exactly one of visitor_id or user_id")
        path = (
            f"/v1/sites/{_seg(site)}/visitors/{_seg(visitor_id)}"
            if visitor_id is not None
            else f"/v1/sites/{_seg(site)}/users/{_seg(user_id or '')}"
        )
        result: dict[str, Any] = self._call("DELETE", path)
        return result

    # -- campaigns ------------------------------------------------------------------------

    def apply_campaigns(self, document: Any) -> dict[str, Any]:
        """``{changed, items: [{kind, key, version, status}]}``."""
        result: dict[str, Any] = self._call("POST", "/v1/campaigns:apply", json=document)
        return result

    def validate_campaigns(self, document: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/campaigns:validate", json=document)
        return result

    def list_campaigns(self, site: str | None = None) -> list[dict[str, Any]]:
        params = {"site": site} if site else {}
        result: list[dict[str, Any]] = self._call("GET", "/v1/campaigns", params=params)[
            "campaigns"
        ]
        return result

    def campaign(self, site: str, campaign_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", self._campaign(site, campaign_id))
        return result

    def delete_campaign(self, site: str, campaign_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", self._campaign(site, campaign_id))
        return result

    def destinations(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/destinations")["destinations"]
        return result

    def deliveries(
        self,
        *,
        site: str | None = None,
        campaign: str | None = None,
        person: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Latest state of each delivery, newest first."""
        params: dict[str, Any] = {"limit": limit}
        filters = (("site", site), ("campaign", campaign), ("person", person), ("status", status))
        params.update({key: value for key, value in filters if value})
        result: list[dict[str, Any]] = self._call("GET", "/v1/deliveries", params=params)[
            "deliveries"
        ]
        return result

    def delivery_summary(self, site: str | None = None) -> list[dict[str, Any]]:
        """Per campaign: ``{site, campaign, deliveries: {status: n}, total}``."""
        params = {"site": site} if site else {}
        result: list[dict[str, Any]] = self._call("GET", "/v1/deliveries/summary", params=params)[
            "campaigns"
        ]
        return result

    def person_steps(self, site: str, person: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "GET", f"/v1/persons/{_seg(site)}/{_seg(person)}/steps"
        )["steps"]
        return result

    @staticmethod
    def _campaign(site: str, campaign_id: str) -> str:
        return f"/v1/campaigns/{_seg(site)}/{_seg(campaign_id)}"

    @staticmethod
    def _audience(site: str, audience_id: str) -> str:
        return f"/v1/sites/{_seg(site)}/audiences/{_seg(audience_id)}"


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        raise AdminAPIError(
            str(body["error"]),
            str(body.get("detail") or ""),
            status=response.status_code,
            field=body.get("field"),
        )
    raise AdminAPIError("http_error", response.text[:200], status=response.status_code)
