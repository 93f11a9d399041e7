-- `person_signals.times` as a plain array (merged by `groupUniqArrayArray` as parts merge)
-- instead of a `groupUniqArray` state: reading a person's times no longer rebuilds a hash set
-- per row (finalizing the states was most of an evaluation's read: 152 ms for 1,000 persons
-- against 36 ms for arrays). The rows are copied, so no signal needs a backfill again. A row
-- expires with the events TTL once its latest event has (the read drops older times of a row
-- still alive).
--
-- The feed views write the old type into the table: they are dropped first (`drop_views`); the
-- segmenter installs the new feed when it starts. Like 0004, stop every segmenter before the
-- upgrade: one still running the old version keeps inserting events with no feed.
-- skip_if: SELECT toUInt8(type LIKE 'SimpleAggregateFunction%') FROM system.columns WHERE database = '{db}' AND table = 'person_signals' AND name = 'times'
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
TTL toDateTime(intDiv(last_t, 1000)) + INTERVAL {ttl_days} DAY;
INSERT INTO {db}.person_signals_v2 (site_id, visitor_id, signal, product, times, last_t)
SELECT site_id, visitor_id, signal, product, groupUniqArrayMerge(times), max(last_t)
FROM {db}.person_signals
GROUP BY site_id, visitor_id, signal, product
SETTINGS optimize_aggregation_in_order = 1;
EXCHANGE TABLES {db}.person_signals AND {db}.person_signals_v2;
DROP TABLE {db}.person_signals_v2
