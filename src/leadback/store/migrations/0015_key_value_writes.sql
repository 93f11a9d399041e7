-- The key-value tables a round reads and writes (`person_state`, `person_memberships`) take their
-- writes into RocksDB's memtable and write-ahead log instead of a sorted file ingested per insert
-- (`optimize_for_bulk_insert`, on by default, meant for large loads): a round writes a few
-- thousand keys, and every ingested file was one more for each point read to look into until
-- compaction caught up. With 10M events stored (200,000 visitors) a round of 6,000 events took a
-- third less (bench.round_cost: 653-680 against 991-993 ms; its state read 141 against 230 ms);
-- with 50M no difference. docs/performance.md, session 14.
ALTER TABLE {db}.person_state MODIFY SETTING optimize_for_bulk_insert = 0;
ALTER TABLE {db}.person_memberships MODIFY SETTING optimize_for_bulk_insert = 0
