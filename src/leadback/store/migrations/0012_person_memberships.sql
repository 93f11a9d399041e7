-- `person_memberships`: the latest version of each membership once more, one key-value row per
-- person (`EmbeddedRocksDB`, key `site_id \0 person_id`), which is what a round reads. From
-- `memberships` (a ReplacingMergeTree read `FINAL`) a read of a round's persons opened a granule
-- per person in every part and grew with the table (2,500 persons of the 50M benchmark's 4.9M
-- memberships: 299 against 36 ms by key, bench.point_reads). A view merges every insert into
-- `memberships` into the persons' values: the stored values of the block's keys looked up by a
-- `direct` join (no scan), and per audience the entry of the highest version (a version has one
-- content, so a block written twice changes nothing). Every write of memberships runs on the
-- segmenter's rounds' client, one statement at a time: no two writers merge into one key at
-- once. `memberships` stays the table of record (the admin API, the dispatcher, full syncs).
-- Stop every segmenter before the upgrade.
CREATE TABLE IF NOT EXISTS {db}.person_memberships
(
    k String,
    site_id String,
    person_id String,
    v Array(Tuple(String, String, UInt64, Int64, Array(String)))
)
ENGINE = EmbeddedRocksDB
PRIMARY KEY k;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.memberships_to_person_memberships
TO {db}.person_memberships
AS SELECT k, site_id, person_id, groupArray(latest) AS v
FROM (
    SELECT k, site_id, person_id, argMax(e, e.3) AS latest
    FROM (
        SELECT n.k AS k, n.site_id AS site_id, n.person_id AS person_id,
            arrayConcat(r.v, n.v) AS entries
        FROM (
            SELECT concat(site_id, '\0', person_id) AS k, site_id, person_id,
                groupArray((audience_id, toString(state), version, entered_at, products)) AS v
            FROM {db}.memberships
            GROUP BY site_id, person_id
        ) AS n
        LEFT JOIN {db}.person_memberships AS r ON n.k = r.k
        SETTINGS join_algorithm = 'direct'
    )
    ARRAY JOIN entries AS e
    GROUP BY k, site_id, person_id, e.1
)
GROUP BY k, site_id, person_id;
INSERT INTO {db}.person_memberships
SELECT concat(site_id, '\0', person_id), site_id, person_id,
    groupArray((audience_id, toString(state), version, entered_at, products))
FROM {db}.memberships FINAL
GROUP BY site_id, person_id
SETTINGS max_bytes_before_external_group_by = 1000000000
