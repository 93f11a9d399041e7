-- Per-person state audiences are evaluated on (leadback.audiences.signals): per visitor, signal
-- (an audience rule's event test) and product, the set of (occurred_at ms, event hash) of the
-- events that matched, and the latest time. Filled by the feed view on `events` (created by the
-- segmenter for the loaded audiences) and by backfills of new signals over stored history.
CREATE TABLE IF NOT EXISTS {db}.person_signals
(
    site_id LowCardinality(String),
    visitor_id String,
    signal UInt64,
    product String,
    times AggregateFunction(groupUniqArray, Tuple(Int64, UInt64)),
    last_t SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (site_id, visitor_id, signal, product);

-- Which signals hold all stored history (state `done`), which are being filled (`running`),
-- and which left the feed (`dropped`: backfilled again if an audience needs them back).
CREATE TABLE IF NOT EXISTS {db}.signal_backfills
(
    site_id LowCardinality(String),
    signal UInt64,
    state LowCardinality(String),
    predicate String,
    rev UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(rev)
ORDER BY (site_id, signal);

-- Progress of bringing an audience version live (backfill of its new signals, then the
-- evaluation of everyone of the site), read by the admin API and `leadback audiences`.
CREATE TABLE IF NOT EXISTS {db}.audience_refreshes
(
    site_id LowCardinality(String),
    audience_id String,
    version UInt64,
    phase LowCardinality(String),
    done UInt64,
    total UInt64,
    rows_read UInt64,
    started_at DateTime64(3, 'UTC'),
    rev UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(rev)
ORDER BY (site_id, audience_id, version)
