-- `person_signals` in granules of 256 rows instead of 8,192. An evaluation reads a few
-- thousand persons spread over the whole table: a granule is the least ClickHouse reads, so
-- with 8,192-row granules a round's read touched most of the table (50M stored events: 6.4M of
-- 17.6M rows read for the 60,000 rows of 3,000 persons), a cost that grew with the table, not
-- with the persons. With 256 a person's rows cost at most 256 read. The primary index grows in
-- proportion (about 60 bytes per granule held in memory: 4 MB for those 17.6M rows).
--
-- Version 8 was a `stored_at` column of an experiment taken out again (commit deee5fb): a
-- database that ran it keeps version 8 recorded; the copy below leaves that column out.
-- Like 0007, stop every segmenter before the upgrade (the feed views are dropped first and
-- installed again by the segmenter when it starts).
-- skip_if: SELECT toUInt8(create_table_query LIKE '%index_granularity = 256%') FROM system.tables WHERE database = '{db}' AND name = 'person_signals'
-- drop_views: person_signals_feed_
DROP TABLE IF EXISTS {db}.person_signals_v2;
CREATE TABLE {db}.person_signals_v2
(
    site_id LowCardinality(String),
    visitor_id String,
    signal UInt64,
    product String,
    times SimpleAggregateFunction(groupUniqArrayArray, Array(Tuple(Int64, UInt64))),
    last_t SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (site_id, visitor_id, signal, product)
TTL toDateTime(intDiv(last_t, 1000)) + INTERVAL {ttl_days} DAY
SETTINGS index_granularity = 256;
INSERT INTO {db}.person_signals_v2 (site_id, visitor_id, signal, product, times, last_t)
SELECT site_id, visitor_id, signal, product, times, last_t FROM {db}.person_signals;
EXCHANGE TABLES {db}.person_signals AND {db}.person_signals_v2;
DROP TABLE {db}.person_signals_v2
