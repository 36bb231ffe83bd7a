-- Release finds an allocation's slots by the node and GPU indices its record names,
-- so no index covers the column a claim and a release change (ADR 030).
DROP INDEX ix_node_resource_slots_allocation;
