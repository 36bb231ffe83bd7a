-- Every claim and release of a slot rewrites each index of its row, and two indexed
-- its allocation: node_resource_slots_allocation (every row) and the partial
-- ix_node_resource_slots_allocation (held slots only), which serves every lookup by
-- allocation (an allocation id is never NULL).
DROP INDEX node_resource_slots_allocation;
