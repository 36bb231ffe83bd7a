-- Every free-count change rewrites each index of its node row. nodes_sku_status
-- (sku_id, status) is the prefix of ix_nodes_placement_order, which serves the same
-- lookups.
DROP INDEX nodes_sku_status;
