-- The event store: one row per canonical event (leadback.events.v1).
-- ReplacingMergeTree on (site_id, visitor_id, event_id): a producer retry or replay of the same
-- event collapses into one row; read with FINAL (or GROUP BY event_id) for exact counts.
-- Retried inserts of the same batch are dropped at insert time by the deduplication token.
-- 0004 rebuilds this table around the event time (occurred_at, monthly partitions on it).
CREATE TABLE IF NOT EXISTS {db}.events
(
    schema_version UInt8,
    event_id String,
    site_id LowCardinality(String),
    visitor_id String,
    type LowCardinality(String),
    name String,
    sent_at Nullable(DateTime64(3, 'UTC')),
    received_at DateTime64(3, 'UTC'),
    anonymous_id String,
    user_id String,
    traits String,
    url String,
    referrer String,
    utm Tuple(
        source LowCardinality(String),
        medium LowCardinality(String),
        campaign String,
        term String,
        content String),
    click_ids Tuple(gclid String, fbclid String, yclid String, ttclid String, msclkid String),
    properties String,
    context Tuple(user_agent String, ip String, language LowCardinality(String)),
    consent Tuple(
        status LowCardinality(String),
        purposes Array(LowCardinality(String)),
        gpc Bool,
        dnt Bool,
        tracking Bool),
    bot Bool,
    source LowCardinality(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(received_at)
ORDER BY (site_id, visitor_id, event_id)
TTL toDateTime(received_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = {dedup_window};

-- Replay intents: written before each events insert, so a segmenter that restarts (or takes
-- over a partition) re-forms exactly the same batch and reuses the same deduplication token.
CREATE TABLE IF NOT EXISTS {db}.segmenter_batches
(
    consumer_group String,
    topic String,
    partition UInt32,
    first_offset UInt64,
    last_offset UInt64,
    first_timestamp Int64,
    records UInt32,
    token String,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (consumer_group, topic, partition, first_offset)
TTL toDateTime(created_at) + INTERVAL 30 DAY
