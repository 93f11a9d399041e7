-- What 0004 leaves when a process dies between its swap and its last statement: the old
-- events table under the work table's name.
DROP TABLE IF EXISTS {db}.events_v2
