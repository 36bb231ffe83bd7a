-- Free GPUs per node, kept by reserve and release in the same transaction as the slot
-- changes, so placement picks candidates from an index instead of counting every free
-- slot of the SKU on each request. The slots stay the truth (they are what is
-- claimed); this is their count.
ALTER TABLE nodes ADD COLUMN free_gpus BIGINT NOT NULL DEFAULT 0;
UPDATE nodes SET free_gpus =
    (SELECT COUNT(*) FROM node_resource_slots r WHERE r.node_id = nodes.id AND r.allocation_id IS NULL);
CREATE INDEX ix_nodes_placement ON nodes (sku_id, status, free_gpus);
-- Release finds an allocation's slots by it.
CREATE INDEX ix_node_resource_slots_allocation ON node_resource_slots (allocation_id)
    WHERE allocation_id IS NOT NULL;
