"""What the timer pass and the outcome writer share: the messages in flight, the counters,
and how a step becomes a ledger row or a dead record."""

from __future__ import annotations

from dataclasses import dataclass, field

from leadback.destinations.base import DestinationError
from leadback.dispatcher.book import LiveCampaign
from leadback.dispatcher.dead_letters import DeadRecord, dead_record
from leadback.dispatcher.ledger import DeliveryRow
from leadback.dispatcher.planner import Revisions
from leadback.dispatcher.steps import StepRow, row_delivery_id


@dataclass
class InFlight:
    row: StepRow
    campaign_version: int
    channel: str
    destination: str
    forget: dict[str, str]  # how to forget the address if it is gone
    traits: dict[str, object]


@dataclass
class DispatchStats:
    passes: int = 0
    decided: dict[str, int] = field(default_factory=dict)  # status -> count
    outcomes: dict[str, int] = field(default_factory=dict)  # channel:status -> count
    dead: int = 0

    def count(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


class Rows:
    """Makes ledger rows, each with the next revision as its ``seq``."""

    def __init__(self, revisions: Revisions) -> None:
        self._rev = revisions

    def delivery(
        self,
        r: StepRow,
        live: LiveCampaign | None,
        kind: str,
        destination: str,
        status: str,
        at_ms: int,
        *,
        reason: str = "",
        attempt: int = 0,
        error: DestinationError | None = None,
        provider_id: str = "",
    ) -> DeliveryRow:
        """The ledger row of one decision or attempt about step ``r``."""
        return DeliveryRow(
            delivery_id=row_delivery_id(r),
            site_id=r.site_id,
            campaign_id=r.campaign_id,
            campaign_version=live.version if live else 0,
            person_id=r.person_id,
            audience_id=r.audience_id,
            membership_version=r.membership_version,
            step=r.step,
            channel=kind,
            destination_id=destination,
            status=status,
            at_ms=at_ms,
            reason=reason,
            attempt=attempt,
            http_status=(error.status or 0) if error else 0,
            response=error.response if error else "",
            provider_id=provider_id,
            change_at=r.change_at,
            seq=self._rev.next(),
        )


def dead_from(
    r: StepRow,
    kind: str,
    destination: str,
    reason: str,
    at_ms: int,
    error: DestinationError | None = None,
) -> DeadRecord:
    """The dead-topic record of step ``r`` failed for good (``error``: the last answer)."""
    return dead_record(
        delivery_id=row_delivery_id(r),
        site_id=r.site_id,
        campaign_id=r.campaign_id,
        person_id=r.person_id,
        step=r.step,
        channel=kind,
        destination_id=destination,
        reason=reason,
        detail=error.detail if error else "",
        http_status=error.status if error else None,
        response=error.response if error else "",
        attempts=r.attempt + 1,
        at_ms=at_ms,
    )
