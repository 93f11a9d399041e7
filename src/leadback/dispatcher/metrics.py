"""Prometheus samples of a dispatcher member."""

from __future__ import annotations

from collections.abc import Iterable

from leadback.dispatcher.member import Dispatcher
from leadback.metrics import Sample


def dispatcher_samples(d: Dispatcher) -> Iterable[Sample]:
    """What /metrics shows, read when scraped."""
    st = d.stats
    yield Sample("leadback_dispatch_changes", "audience changes read", "counter", st.changes_seen)
    yield Sample("leadback_dispatch_enrollments", "campaign enrollments", "counter", st.enrolled)
    yield Sample(
        "leadback_dispatch_steps_cancelled",
        "pending steps cancelled by an exit",
        "counter",
        st.cancelled,
    )
    yield Sample("leadback_dispatch_passes", "timer passes", "counter", st.passes)
    for status, n in sorted(st.decided.items()):
        yield Sample(
            "leadback_dispatch_decisions",
            "due steps decided, by decision",
            "counter",
            n,
            (("decision", status),),
        )
    for key, n in sorted(st.outcomes.items()):
        channel, status = key.split(":", 1)
        yield Sample(
            "leadback_dispatch_deliveries",
            "provider call outcomes, by channel and outcome",
            "counter",
            n,
            (("channel", channel), ("outcome", status)),
        )
    yield Sample("leadback_dispatch_in_flight", "messages being sent", "gauge", st.in_flight)
    yield Sample("leadback_dispatch_dead", "deliveries sent to the dead topic", "counter", st.dead)
    for destination, n in sorted(st.backlog.items()):
        yield Sample(
            "leadback_dispatch_backlog",
            "messages queued or in flight per destination",
            "gauge",
            n,
            (("destination", destination),),
        )
