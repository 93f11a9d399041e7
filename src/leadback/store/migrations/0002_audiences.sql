-- Audiences: definitions, identity, per-person memberships, the change log (outbox), timers.

-- Audience definitions as written through the admin API; one row per version.
CREATE TABLE IF NOT EXISTS {db}.audiences
(
    site_id LowCardinality(String),
    audience_id String,
    version UInt32,
    definition String,
    deleted UInt8,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (site_id, audience_id);

-- The definition version whose members are materialized; differs from `audiences` until the
-- segmenter has re-evaluated a changed rule.
CREATE TABLE IF NOT EXISTS {db}.audience_evaluations
(
    site_id LowCardinality(String),
    audience_id String,
    version UInt32,
    evaluated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (site_id, audience_id);

-- Identity graph: which person a visitor id belongs to (identify / alias). A visitor without a
-- row is a person of its own.
CREATE TABLE IF NOT EXISTS {db}.identities
(
    site_id LowCardinality(String),
    visitor_id String,
    person_id String,
    version UInt64,
    INDEX person_idx person_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (site_id, visitor_id);

-- Contact details per visitor, hashed (SHA-256) and encrypted as ingest protected them.
CREATE TABLE IF NOT EXISTS {db}.contacts
(
    site_id LowCardinality(String),
    visitor_id String,
    user_id String,
    traits String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (site_id, visitor_id);

-- Current membership per (audience, person); `version` grows by one with every transition.
CREATE TABLE IF NOT EXISTS {db}.memberships
(
    site_id LowCardinality(String),
    audience_id String,
    person_id String,
    state LowCardinality(String),
    version UInt64,
    products Array(String),
    entered_at Int64,
    changed_at Int64,
    audience_version UInt32
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (site_id, audience_id, person_id)
SETTINGS non_replicated_deduplication_window = {dedup_window};

-- Every enter/exit/update, written before it is published (the outbox of the change topic).
CREATE TABLE IF NOT EXISTS {db}.audience_changes
(
    site_id LowCardinality(String),
    audience_id String,
    person_id String,
    change LowCardinality(String),
    reason LowCardinality(String),
    version UInt64,
    audience_version UInt32,
    products Array(String),
    at Int64,
    entered_at Int64,
    token String,
    INDEX token_idx token TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(at, 1000)))
ORDER BY (site_id, audience_id, at, person_id)
TTL toDateTime(intDiv(at, 1000)) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = {dedup_window};

-- Change batches whose records the broker acknowledged.
CREATE TABLE IF NOT EXISTS {db}.audience_changes_published
(
    token String,
    published_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY token
TTL toDateTime(published_at) + INTERVAL 30 DAY;

-- When a person's audiences could change with no new event (windows closing, idle limits, TTL).
CREATE TABLE IF NOT EXISTS {db}.audience_due
(
    site_id LowCardinality(String),
    due_at Int64,
    person_id String
)
ENGINE = MergeTree
ORDER BY (site_id, due_at)
TTL toDateTime(intDiv(due_at, 1000)) + INTERVAL 2 DAY
SETTINGS non_replicated_deduplication_window = {dedup_window}
