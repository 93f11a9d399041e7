-- The event store rebuilt around the event time: `occurred_at` (when the event happened: the
-- client's time corrected for its clock skew, see leadback/event_time.py) after `received_at`,
-- monthly partitions on it (a per-visitor read costs at least one read per partition: daily
-- partitions made that a floor of ~400), and the TTL on it. ORDER BY is unchanged: the
-- ReplacingMergeTree still collapses a repeated event_id. `DEFAULT received_at` fills the
-- event time of records written before it existed (JSONEachRow leaves omitted keys to the
-- column default), and of the rows copied here.
--
-- The table is copied, swapped in (materialized views reading {db}.events keep firing on the
-- new table), and the old one dropped. A crash anywhere before the swap is retried from the
-- start (the work table is dropped first); after it, the guard below records the migration
-- and 0005 drops what is left. The copy takes as long as the table is big, and must not run
-- in two processes at once: with a ClickHouse server, upgrade with one segmenter replica (the
-- dispatcher after it) and a LEADBACK_CLICKHOUSE_QUERY_TIMEOUT_S that covers the copy.
-- skip_if: SELECT toUInt8(count() > 0) FROM system.columns WHERE database = '{db}' AND table = 'events' AND name = 'occurred_at'
DROP TABLE IF EXISTS {db}.events_v2;

CREATE TABLE {db}.events_v2
(
    schema_version UInt8,
    event_id String,
    site_id LowCardinality(String),
    visitor_id String,
    type LowCardinality(String),
    name String,
    sent_at Nullable(DateTime64(3, 'UTC')),
    received_at DateTime64(3, 'UTC'),
    occurred_at DateTime64(3, 'UTC') DEFAULT received_at,
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
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (site_id, visitor_id, event_id)
TTL toDateTime(occurred_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = {dedup_window};

INSERT INTO {db}.events_v2
    (schema_version, event_id, site_id, visitor_id, type, name, sent_at, received_at,
     occurred_at, anonymous_id, user_id, traits, url, referrer, utm, click_ids, properties,
     context, consent, bot, source, inserted_at)
SELECT schema_version, event_id, site_id, visitor_id, type, name, sent_at, received_at,
    received_at, anonymous_id, user_id, traits, url, referrer, utm, click_ids, properties,
    context, consent, bot, source, inserted_at
FROM {db}.events;

EXCHANGE TABLES {db}.events AND {db}.events_v2;

DROP TABLE {db}.events_v2
