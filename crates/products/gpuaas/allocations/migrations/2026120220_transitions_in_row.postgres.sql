-- Transitions move into their allocation's row: a JSON array, oldest first, written
-- by the UPDATE that makes the change (ADR 017). A row of its own per transition cost
-- an INSERT with two index entries per change and a second read per view.
ALTER TABLE allocations ADD COLUMN transitions TEXT NOT NULL DEFAULT '[]';
UPDATE allocations SET transitions = history.list
FROM (
    SELECT allocation_id, CAST(json_agg(json_build_object(
        'from', from_status, 'to', to_status, 'actor', actor, 'reason', reason,
        'correlation_id', correlation_id, 'at', at) ORDER BY at, id) AS TEXT) AS list
    FROM allocation_transitions GROUP BY allocation_id
) AS history
WHERE allocations.id = history.allocation_id;
DROP TABLE allocation_transitions;
