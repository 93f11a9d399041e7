-- Rounds stop writing `person_signals`. Since 0011 each block of the feed went twice: into
-- `person_signals` (a MergeTree part a round, then its merges) and merged into the persons'
-- values of `person_state`, which is all a round reads. The first write cost a round about 30 ms
-- whatever its size (docs/performance.md, session 14). `person_signals` is now where a backfill
-- writes the signals it computes over stored history; they are merged into `person_state` from
-- there on the rounds' client (leadback.audiences.person_state), and the evaluation of a new
-- audience lists a site's visitors from `events`. Existing rows stay (they are history, and go
-- with the table's TTL). Stop every segmenter before the upgrade, as for 0011.
DROP VIEW IF EXISTS {db}.signal_rows_to_person_signals
