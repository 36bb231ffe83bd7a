-- Transitions move into their allocation's row: a JSON array, oldest first, written
-- by the UPDATE that makes the change (ADR 017). A row of its own per transition cost
-- an INSERT with two index entries per change and a second read per view.
ALTER TABLE allocations ADD COLUMN transitions TEXT NOT NULL DEFAULT '[]';
UPDATE allocations SET transitions = (
    SELECT json_group_array(json_object(
        'from', from_status, 'to', to_status, 'actor', actor, 'reason', reason,
        'correlation_id', correlation_id, 'at', at) ORDER BY at, id)
    FROM allocation_transitions WHERE allocation_transitions.allocation_id = allocations.id
)
WHERE id IN (SELECT allocation_id FROM allocation_transitions);
DROP TABLE allocation_transitions;
