-- Dispatcher: campaign and destination definitions, scheduled steps, the delivery ledger,
-- suppressions, and the addresses people gave a channel (push subscriptions, Telegram chats).

-- Campaign definitions as written through the admin API; one row per version.
CREATE TABLE IF NOT EXISTS {db}.campaigns
(
    site_id LowCardinality(String),
    campaign_id String,
    version UInt32,
    definition String,
    deleted UInt8,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (site_id, campaign_id);

-- Destination definitions (an SMTP server, a Twilio account, ...). Credentials are never
-- stored: a definition names the environment variable or file that holds each secret.
CREATE TABLE IF NOT EXISTS {db}.destinations
(
    destination_id String,
    version UInt32,
    definition String,
    deleted UInt8,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY destination_id;

-- Site policies: time zone, default quiet hours, caps per channel across campaigns.
CREATE TABLE IF NOT EXISTS {db}.campaign_policies
(
    site_id LowCardinality(String),
    version UInt32,
    definition String,
    deleted UInt8,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY site_id;

-- One row per (campaign, person, membership version and entry time, step): scheduled when the
-- person entered the audience, then done or cancelled. `rev` orders a row's states: 0 for the
-- enrollment (a replayed one never overrides a later state), then the dispatcher's clock in ms.
CREATE TABLE IF NOT EXISTS {db}.campaign_steps
(
    site_id LowCardinality(String),
    campaign_id String,
    person_id String,
    membership_version UInt64,
    step UInt8,
    audience_id String,
    partition UInt32,
    due_at Int64,
    state LowCardinality(String),
    reason LowCardinality(String),
    attempt UInt16,
    products Array(String),
    change_at Int64,
    rev UInt64,
    INDEX due_idx due_at TYPE minmax GRANULARITY 1,
    INDEX state_idx state TYPE set(8) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(rev)
ORDER BY (site_id, campaign_id, person_id, membership_version, change_at, step)
TTL toDateTime(intDiv(due_at, 1000)) + INTERVAL 120 DAY;

-- Every decision and attempt of every message: an append-only log. The latest row of a
-- delivery_id (highest `seq`) is its outcome; `sending` is written before the provider call.
CREATE TABLE IF NOT EXISTS {db}.deliveries
(
    delivery_id String,
    site_id LowCardinality(String),
    campaign_id String,
    campaign_version UInt32,
    person_id String,
    audience_id String,
    membership_version UInt64,
    step UInt8,
    channel LowCardinality(String),
    destination_id String,
    status LowCardinality(String),
    reason String,
    attempt UInt16,
    http_status UInt16,
    response String,
    provider_id String,
    change_at Int64,
    at DateTime64(3, 'UTC'),
    seq UInt64,
    INDEX person_idx person_id TYPE bloom_filter GRANULARITY 4,
    INDEX status_idx status TYPE set(16) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (site_id, campaign_id, at, delivery_id)
TTL toDateTime(at) + INTERVAL {ttl_days} DAY;

-- Who gets nothing (on a channel, or on all). `subject` is `person:<id>`, `email:<sha256>` or
-- `phone:<sha256>`; `active` 0 lifts an earlier suppression (a new opt-in).
CREATE TABLE IF NOT EXISTS {db}.suppressions
(
    site_id LowCardinality(String),
    subject String,
    channel LowCardinality(String),
    reason LowCardinality(String),
    active UInt8,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (site_id, subject, channel);

-- Suppressions people asked for through ingest (one-click unsubscribe, bounce reports), which
-- arrive as `leadback.suppressed` / `leadback.unsuppressed` signal events.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.suppressions_from_signals TO {db}.suppressions AS
SELECT
    site_id,
    JSONExtractString(properties, 'subject') AS subject,
    JSONExtractString(properties, 'channel') AS channel,
    JSONExtractString(properties, 'reason') AS reason,
    toUInt8(name = 'leadback.suppressed') AS active,
    received_at AS at
FROM {db}.events
WHERE source = 'signal' AND name IN ('leadback.suppressed', 'leadback.unsuppressed');

-- Web push subscriptions per visitor (the subscription JSON encrypted with the contact key).
CREATE TABLE IF NOT EXISTS {db}.push_subscriptions
(
    site_id LowCardinality(String),
    visitor_id String,
    endpoint_sha256 String,
    subscription_enc String,
    active UInt8,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (site_id, visitor_id, endpoint_sha256);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.push_subscriptions_from_signals
TO {db}.push_subscriptions AS
SELECT
    site_id,
    visitor_id,
    JSONExtractString(properties, 'endpoint_sha256') AS endpoint_sha256,
    JSONExtractString(properties, 'subscription_enc') AS subscription_enc,
    toUInt8(name = 'leadback.push_subscribed') AS active,
    received_at AS at
FROM {db}.events
WHERE source = 'signal' AND name IN ('leadback.push_subscribed', 'leadback.push_unsubscribed');

-- Telegram chats linked to a visitor through a bot's deep link (chat id encrypted).
CREATE TABLE IF NOT EXISTS {db}.telegram_chats
(
    site_id LowCardinality(String),
    visitor_id String,
    destination_id String,
    chat_enc String,
    active UInt8,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (site_id, visitor_id, destination_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.telegram_chats_from_signals TO {db}.telegram_chats AS
SELECT
    site_id,
    visitor_id,
    JSONExtractString(properties, 'destination_id') AS destination_id,
    JSONExtractString(properties, 'chat_enc') AS chat_enc,
    toUInt8(name = 'leadback.telegram_linked') AS active,
    received_at AS at
FROM {db}.events
WHERE source = 'signal' AND name IN ('leadback.telegram_linked', 'leadback.telegram_unlinked')
