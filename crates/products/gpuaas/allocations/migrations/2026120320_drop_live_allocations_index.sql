-- Since the live counts are kept in allocation_live_counts (2026120260), only
-- depletion read this index, and every status change of a live allocation wrote an
-- entry in it: four per allocation's life. Depletion reads the status index instead,
-- whose live part is bounded by the fleet's GPUs, not by a tenant's history (ADR 032).
DROP INDEX ix_allocations_live;
