-- `memberships` sorted by person before audience, in granules of 256 rows. An evaluation reads
-- the memberships of a round's persons: sorted by (site, audience, person) that read opened
-- every granule of the site's audiences whatever the number of persons (50M stored events,
-- 4.9M memberships: 700 ms in a round, about as much for a timer pass of 20 persons). Sorted by
-- (site, person, audience) a person's memberships sit together. Reading an audience's members
-- (the admin API, a destination's full sync, deleting an audience) scans the site's
-- memberships instead, which those rarer reads can afford.
-- skip_if: SELECT toUInt8(sorting_key = 'site_id, person_id, audience_id') FROM system.tables WHERE database = '{db}' AND name = 'memberships'
DROP TABLE IF EXISTS {db}.memberships_v2;
CREATE TABLE {db}.memberships_v2
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
ORDER BY (site_id, person_id, audience_id)
SETTINGS non_replicated_deduplication_window = {dedup_window}, index_granularity = 256;
INSERT INTO {db}.memberships_v2 SELECT * FROM {db}.memberships;
EXCHANGE TABLES {db}.memberships AND {db}.memberships_v2;
DROP TABLE {db}.memberships_v2
