"""Prometheus samples of a segmenter process: its stream loop and its audience engine."""

from __future__ import annotations

from collections.abc import Iterable

from leadback.audiences.engine import AudienceEngine
from leadback.metrics import Sample
from leadback.segmenter.member import Segmenter


def samples(seg: Segmenter, engine: AudienceEngine | None) -> Iterable[Sample]:
    """What /metrics shows, read when scraped."""
    st = seg.stats
    if engine is not None:
        au = engine.stats
        yield Sample(
            "leadback_audience_evaluations", "evaluation statements run", "counter", au.evaluations
        )
        yield Sample(
            "leadback_audience_changes", "membership changes logged", "counter", au.changes
        )
        yield Sample(
            "leadback_audience_changes_published",
            "changes acknowledged by the broker",
            "counter",
            au.changes_published,
        )
        yield Sample(
            "leadback_audience_publish_failures",
            "change batches left in the outbox for the sweep",
            "counter",
            au.publish_failures,
        )
        yield Sample(
            "leadback_audience_persons_evaluated",
            "persons evaluated incrementally",
            "counter",
            au.persons_evaluated,
        )
        yield Sample(
            "leadback_audience_changes_republished",
            "logged changes published by an outbox sweep",
            "counter",
            au.republished,
        )
        yield Sample(
            "leadback_audience_memberships_restored",
            "memberships brought up to the change log after an interrupted write",
            "counter",
            au.memberships_restored,
        )
        yield Sample(
            "leadback_identity_links", "identity links applied", "counter", au.identity_links
        )
        yield Sample(
            "leadback_audience_due_in_rounds",
            "persons come due evaluated with a round's own persons",
            "counter",
            au.due_in_rounds,
        )
        yield Sample(
            "leadback_audience_due_in_timer",
            "persons come due evaluated by the timer pass apart from rounds",
            "counter",
            au.due_in_timer,
        )
        yield Sample(
            "leadback_audiences_not_live",
            "active audiences whose signals are still being backfilled",
            "gauge",
            engine.not_live(),
        )
        yield Sample(
            "leadback_audience_refreshing",
            "1 while new or changed audiences are being brought live (backfill, evaluation)",
            "gauge",
            int(engine.refreshing),
        )
        yield Sample(
            "leadback_audience_last_evaluation_seconds",
            "duration of the last evaluation",
            "gauge",
            au.last_evaluation_seconds,
        )
    yield Sample(
        "leadback_segmenter_events_inserted",
        "events written to ClickHouse",
        "counter",
        st.events_inserted,
    )
    yield Sample(
        "leadback_segmenter_batches_inserted", "batches written", "counter", st.batches_inserted
    )
    yield Sample(
        "leadback_segmenter_batches_replayed",
        "batches re-formed from an intent",
        "counter",
        st.batches_replayed,
    )
    yield Sample(
        "leadback_segmenter_insert_retries",
        "failed store calls retried",
        "counter",
        st.insert_retries,
    )
    yield Sample(
        "leadback_segmenter_events_quarantined",
        "rows sent to the invalid topic",
        "counter",
        st.events_quarantined,
    )
    yield Sample("leadback_segmenter_rounds", "rounds settled and committed", "counter", st.rounds)
    yield Sample(
        "leadback_segmenter_last_round_seconds",
        "duration of the last round, from its first write to its commit",
        "gauge",
        st.last_round_seconds,
    )
    yield Sample(
        "leadback_segmenter_last_insert_seconds",
        "duration of the last insert round (intents and events)",
        "gauge",
        st.last_insert_seconds,
    )
