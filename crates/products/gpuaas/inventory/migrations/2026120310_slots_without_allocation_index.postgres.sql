-- Release finds an allocation's slots by the node and GPU indices its record names,
-- so no index covers the column a claim and a release change: PostgreSQL can then
-- update a slot in place (a HOT update, no index entries), given room on its page,
-- which the fill factor leaves for slots added from now on (ADR 030).
DROP INDEX ix_node_resource_slots_allocation;
ALTER TABLE node_resource_slots SET (fillfactor = 50);
