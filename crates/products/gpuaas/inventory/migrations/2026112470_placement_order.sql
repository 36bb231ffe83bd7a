-- Placement reads candidates in (free_gpus, id) order with a LIMIT: with id in the
-- index that order is the index's, so it reads the few rows it returns instead of
-- sorting every active node of the SKU with enough free GPUs (the old index stopped
-- at free_gpus, and on a large fleet most nodes tie on it).
CREATE INDEX ix_nodes_placement_order ON nodes (sku_id, status, free_gpus, id);
DROP INDEX ix_nodes_placement;
