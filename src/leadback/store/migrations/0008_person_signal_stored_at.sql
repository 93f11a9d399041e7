-- When each `person_signals` row was written (Unix ms; the feed and backfills set it, rows
-- written before have 0; merged rows keep the latest). A segmenter that keeps its persons'
-- state in memory (leadback.audiences.state_cache) reads only the rows written since its last
-- read of them, so a round's read of a person with a long history costs what the round added.
ALTER TABLE {db}.person_signals ADD COLUMN IF NOT EXISTS stored_at SimpleAggregateFunction(max, Int64) DEFAULT 0
