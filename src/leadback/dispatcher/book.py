"""The definitions the dispatcher works from, as last loaded: campaigns by audience, site
policies, destinations and their channels (built once per definition version)."""

from __future__ import annotations

from dataclasses import dataclass

from leadback.campaigns.definitions import CampaignSpec, SitePolicy
from leadback.campaigns.repository import CampaignRepository
from leadback.destinations.base import Channel
from leadback.destinations.config import ChannelDeps, DestinationConfig
from leadback.destinations.registry import build_channel, channel_kind
from leadback.errors import ConfigError
from leadback.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class LiveCampaign:
    spec: CampaignSpec
    version: int


class Book:
    """Loaded definitions; :meth:`refresh` reloads them when the store says they changed."""

    def __init__(self, repository: CampaignRepository, deps: ChannelDeps) -> None:
        self._repo = repository
        self._deps = deps
        self._stamp: tuple[int, ...] | None = None
        self._campaigns: dict[tuple[str, str], LiveCampaign] = {}
        self._by_audience: dict[tuple[str, str], list[LiveCampaign]] = {}
        self.policies: dict[str, SitePolicy] = {}
        self.destinations: dict[str, DestinationConfig] = {}
        self._channels: dict[str, Channel] = {}
        self._broken: dict[str, str] = {}  # destination -> why its channel cannot be built
        self._retired: list[Channel] = []
        self.generation = 0  # grows with every reload

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload if anything changed; returns whether it did."""
        stamp = await self._repo.version_stamp()
        if stamp == self._stamp and not force:
            return False
        campaigns = await self._repo.campaigns()
        self.policies = await self._repo.policies()
        destinations = await self._repo.destinations()
        for dest_id, config in list(self.destinations.items()):
            if destinations.get(dest_id) != config:
                channel = self._channels.pop(dest_id, None)
                if channel is not None:
                    self._retired.append(channel)
                self._broken.pop(dest_id, None)
        self.destinations = destinations
        self._campaigns = {
            (c.spec.site, c.spec.id): LiveCampaign(c.spec, c.version) for c in campaigns
        }
        by_audience: dict[tuple[str, str], list[LiveCampaign]] = {}
        for live in self._campaigns.values():
            by_audience.setdefault((live.spec.site, live.spec.audience), []).append(live)
        self._by_audience = by_audience
        self._stamp = stamp
        self.generation += 1
        log.info(
            "campaign definitions loaded",
            campaigns=len(self._campaigns),
            destinations=len(destinations),
        )
        return True

    def on_audience(self, site: str, audience: str) -> list[LiveCampaign]:
        """Enabled campaigns on one audience."""
        return [c for c in self._by_audience.get((site, audience), []) if c.spec.enabled]

    def has_campaigns(self, site: str, audience: str) -> bool:
        """Whether any campaign (enabled or not) is on the audience."""
        return (site, audience) in self._by_audience

    def campaign(self, site: str, campaign_id: str) -> LiveCampaign | None:
        return self._campaigns.get((site, campaign_id))

    def sites_using(self, destination: str) -> set[str]:
        """Sites whose campaigns have a step on ``destination``."""
        return {
            c.spec.site
            for c in self._campaigns.values()
            if any(step.destination == destination for step in c.spec.steps)
        }

    def step_kind(self, site: str, campaign_id: str, step: int) -> str | None:
        """The channel kind of a campaign's step, if the campaign, step and destination exist."""
        live = self._campaigns.get((site, campaign_id))
        if live is None or step >= len(live.spec.steps):
            return None
        return self.channel_kind(live.spec.steps[step].destination)

    def channel_kind(self, destination: str) -> str | None:
        config = self.destinations.get(destination)
        return channel_kind(config) if config is not None else None

    def channel(self, destination: str) -> Channel:
        """The channel of a destination, built on first use; ``ConfigError`` when its
        definition is gone or a secret it names is missing."""
        channel = self._channels.get(destination)
        if channel is not None:
            return channel
        config = self.destinations.get(destination)
        if config is None:
            raise ConfigError(f"no destination {destination!r}")
        try:
            channel = build_channel(config, self._deps)
        except ConfigError as exc:
            if self._broken.get(destination) != str(exc):
                log.error("a destination cannot be built", destination=destination, error=str(exc))
            self._broken[destination] = str(exc)
            raise
        self._broken.pop(destination, None)
        self._channels[destination] = channel
        return channel

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
            await channel.aclose()
        self._channels.clear()
        self._retired.clear()

    async def close_retired(self) -> None:
        """Close channels whose definitions changed (their queues are empty by now)."""
        retired, self._retired = self._retired, []
        for channel in retired:
            await channel.aclose()
