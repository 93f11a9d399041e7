-- The view of 0012 merged each block of `memberships` into the persons' values by unnesting
-- every stored entry and grouping them again per audience: a round rewrote ~25 entries a person
-- to change two or three. This one keeps the entries a block does not touch as they are and
-- takes, per audience the block touches, the stored entry or the block's, whichever has the
-- higher version (a version has one content: a block written twice changes nothing). The
-- memberships insert of a 50M round: see docs/performance.md (session 13). Stop every segmenter
-- before the upgrade, as for 0012.
DROP VIEW IF EXISTS {db}.memberships_to_person_memberships;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.memberships_to_person_memberships_v2
TO {db}.person_memberships
AS SELECT n.k AS k, n.site_id AS site_id, n.person_id AS person_id,
    arrayConcat(
        arrayFilter(e -> NOT has(n.audiences, e.1), r.v),
        arrayMap(x -> if(arrayFirst(e -> e.1 = x.1, r.v).3 > x.3,
            arrayFirst(e -> e.1 = x.1, r.v), x), n.v)
    ) AS v
FROM (
    SELECT concat(site_id, '\0', person_id) AS k, site_id, person_id,
        groupArray(latest) AS v, arrayMap(x -> x.1, v) AS audiences
    FROM (
        SELECT site_id, person_id,
            argMax((audience_id, toString(state), version, entered_at, products), version)
                AS latest
        FROM {db}.memberships
        GROUP BY site_id, person_id, audience_id
    )
    GROUP BY site_id, person_id
) AS n
LEFT JOIN {db}.person_memberships AS r ON n.k = r.k
SETTINGS join_algorithm = 'direct'
