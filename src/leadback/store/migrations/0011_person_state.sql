-- `person_state`: the rows of `person_signals` kept once more, per visitor, in a key-value table
-- (`EmbeddedRocksDB`, key `site_id \0 visitor_id`). An evaluation reads its persons' signal rows;
-- from the MergeTree that read touches a granule in nearly every part, so it grew with the table
-- (2,500 persons: 1.5 s at 50M stored events), where a read by key costs the persons' rows only
-- (58 ms; bench.point_reads). The feed now writes into `signal_rows` (Null: nothing stored), and
-- two views fan each block out: as it was into `person_signals`, and merged into the persons'
-- values of `person_state` (a `direct` join reads the stored values of the block's keys, no
-- scan; times are a set, so a block written twice changes nothing). A backfill writes
-- `person_signals` only, on its own client; the persons it filled are then copied into
-- `person_state` range by range on the rounds' client (leadback.audiences.person_state), so no
-- two writers merge into one key at once. The engine's TTL drops a key not written for the
-- events TTL; reads drop older times. The view that merges into `person_state` is the
-- segmenter's (it makes it at start, before the feed, and remakes the table when the TTL setting
-- changes). Like 0007, stop every segmenter before the upgrade.
-- drop_views: person_signals_feed_
CREATE TABLE IF NOT EXISTS {db}.signal_rows
(
    site_id LowCardinality(String),
    visitor_id String,
    signal UInt64,
    product String,
    times Array(Tuple(Int64, UInt64)),
    last_t Int64
)
ENGINE = Null;
CREATE TABLE IF NOT EXISTS {db}.person_state
(
    k String,
    site_id String,
    visitor_id String,
    v Array(Tuple(UInt64, String, Array(Tuple(Int64, UInt64)), Int64))
)
ENGINE = EmbeddedRocksDB({ttl_seconds})
PRIMARY KEY k;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.signal_rows_to_person_signals TO {db}.person_signals
AS SELECT site_id, visitor_id, signal, product, times, last_t FROM {db}.signal_rows;
INSERT INTO {db}.person_state
SELECT concat(site_id, '\0', visitor_id), site_id, visitor_id,
    groupArray((signal, product, times, last_t))
FROM (
    SELECT site_id, visitor_id, signal, product, groupUniqArrayArray(times) AS times,
        max(last_t) AS last_t
    FROM {db}.person_signals
    GROUP BY site_id, visitor_id, signal, product
)
GROUP BY site_id, visitor_id
SETTINGS max_bytes_before_external_group_by = 1000000000
